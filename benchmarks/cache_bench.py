"""In-process figures of the in-memory cache and the statter (no server, no network).

- :func:`memory_per_entry`: tracemalloc bytes per global entry, against a naive dict;
- :func:`hit_cost`: ns per hit at 1,000 and at 1,000,000 entries (repeated and first hits,
  and a bare dict as the CPU-cache floor);
- :func:`scan_and_coalescing`: a hot set kept through a 10x-capacity sweep; concurrent
  misses on one digest making one backend call.
"""

from __future__ import annotations

import asyncio
import random
import time
import tracemalloc

from common import OCT, digest_of
from descriptor_client.descriptor import Descriptor
from descriptor_client.errors import BlobUnknownError


def memory_per_entry(n: int) -> dict[str, float]:
    """tracemalloc bytes per global entry: the compact cache, and a naive dict of objects."""
    from descriptor_server.caches.inmemory import InMemoryCache

    async def fill(cache: InMemoryCache, count: int) -> None:
        for i in range(count):
            d = digest_of(i)
            await cache.set_descriptor(d, Descriptor(OCT, d, 1000 + i))

    out: dict[str, float] = {}
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    cache = InMemoryCache(n)
    asyncio.run(fill(cache, n))
    assert len(cache) == n
    out["compact_bytes"] = (tracemalloc.get_traced_memory()[0] - base) / n
    del cache
    naive_n = min(n, 200_000)
    base = tracemalloc.get_traced_memory()[0]
    naive: dict[str, Descriptor] = {}
    for i in range(naive_n):
        d = digest_of(i)
        naive[d] = Descriptor(OCT, d, 1000 + i)
    out["naive_bytes"] = (tracemalloc.get_traced_memory()[0] - base) / naive_n
    del naive
    tracemalloc.stop()
    return out


def hit_cost(big: int) -> dict[str, float]:
    """ns per cache.stat hit at 1,000 and at ``big`` entries (best of 5 passes)."""
    from descriptor_server.caches.inmemory import InMemoryCache

    async def run() -> dict[str, float]:
        caches = {}
        for n in (1000, big):
            cache = InMemoryCache(n)
            for i in range(n):
                d = digest_of(i)
                await cache.set_descriptor(d, Descriptor(OCT, d, i))
            caches[n] = cache
        rng = random.Random(7)
        out: dict[str, float] = {}
        for n, cache in caches.items():
            sample = [digest_of(i) for i in rng.sample(range(n), 1000)]
            stat = cache.stat
            repeated, first = [], []
            for _ in range(5):
                cache._hot.clear()  # first hits: the full lookup through the big dict
                t0 = time.perf_counter_ns()
                for d in sample:
                    await stat(d)
                first.append((time.perf_counter_ns() - t0) / len(sample))
                t0 = time.perf_counter_ns()
                for _ in range(5):  # repeated hits: the production steady state
                    for d in sample:
                        await stat(d)
                repeated.append((time.perf_counter_ns() - t0) / len(sample) / 5)
            out[f"first_{n}"] = min(first)
            out[f"repeated_{n}"] = min(repeated)
            # The reference: a bare dict[bytes, int] looked up by freshly decoded keys,
            # the memory-hierarchy cost any hash table pays at this size.
            bare = {bytes.fromhex(digest_of(i)[7:]): i for i in range(n)}
            hexes = [d[7:] for d in sample]
            times = []
            for _ in range(5):
                t0 = time.perf_counter_ns()
                for h in hexes:
                    bare.get(bytes.fromhex(h))
                times.append((time.perf_counter_ns() - t0) / len(hexes))
            out[f"bare_{n}"] = min(times)
            del bare
        return out

    return asyncio.run(run())


class CountingBackend:
    """A backend that answers every digest and counts its Stat calls."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls = 0
        self.delay = delay

    async def stat(self, digest: str, repository: str = "") -> Descriptor:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        return Descriptor(OCT, digest, 1)

    async def set_descriptor(self, digest: str, descriptor: Descriptor, repository: str = "") -> None:
        return None

    async def clear(self, digest: str, repository: str = "") -> None:
        raise BlobUnknownError(digest)

    def supports_clear(self, repository: str) -> bool:
        return False

    async def close(self) -> None:
        return None


def scan_and_coalescing(capacity: int) -> dict[str, float]:
    """Hot set (10% of capacity) kept through a 10x-capacity BatchStat sweep; misses coalesced."""
    from descriptor_server.caches.inmemory import InMemoryCache
    from descriptor_server.core.statter import CachedBlobStatter

    async def run() -> dict[str, float]:
        cache = InMemoryCache(capacity)
        statter = CachedBlobStatter(cache, CountingBackend())
        hot = [digest_of(i, "hot") for i in range(capacity // 10)]
        for _ in range(5):
            for i in range(0, len(hot), 1000):
                await statter.batch_stat(hot[i : i + 1000])
        for start in range(0, capacity * 10, 1000):
            await statter.batch_stat([digest_of(i, "scan") for i in range(start, start + 1000)])
        kept = sum(1 for d in hot if cache.holds(d))
        backend = CountingBackend(delay=0.01)
        coalescing = CachedBlobStatter(InMemoryCache(capacity), backend)
        d = digest_of(0, "coalesce")
        await asyncio.gather(*(coalescing.stat(d) for _ in range(100)))
        return {"hot_kept": kept / len(hot), "backend_calls_for_100_misses": float(backend.calls)}

    return asyncio.run(run())
