"""The in-memory cache: bounded, scan-resistant, compact, and its batch path.

Real parts throughout (InMemoryCache, FilesystemBackend over distribution's layout, the
real server process); the one fake is a cache whose batch lookup fails, to inject the
fault an unreachable Redis produces.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from descriptor_client import (
    AsyncDescriptorClient,
    BlobUnknownError,
    Descriptor,
    DigestInvalidFormatError,
)
from descriptor_server.backends.filesystem import FilesystemBackend
from descriptor_server.caches.inmemory import InMemoryCache
from descriptor_server.core.statter import CachedBlobStatter
from helpers.support import A256, A384, OCT, REPO, Layout, ServerProcess, base_config

JSON = "application/json"


def digest(i: int, salt: str = "") -> str:
    return "sha256:" + hashlib.sha256(f"{salt}{i}".encode()).hexdigest()


# -- bounds ------------------------------------------------------------------------------


async def test_capacity_bounds_the_entries() -> None:
    cache = InMemoryCache(100)
    for i in range(1000):
        await cache.set_descriptor(digest(i), Descriptor(OCT, digest(i), i))
    assert len(cache) == 100
    # the newest entries are the ones kept by a pure insertion stream
    assert await cache.stat(digest(999)) == Descriptor(OCT, digest(999), 999)
    with pytest.raises(BlobUnknownError):
        await cache.stat(digest(0))


async def _fill_repositories(cache: InMemoryCache, start: int, stop: int) -> int:
    """SetDescriptor in repositories start..stop; the bytes tracemalloc traces after."""
    import tracemalloc

    for i in range(start, stop):
        await cache.set_descriptor(digest(i), Descriptor(OCT, digest(i), i), f"team/repo-{i}")
    return tracemalloc.get_traced_memory()[0]


async def test_repository_ids_are_freed_with_their_last_entry() -> None:
    # Each SetDescriptor names a new repository; at capacity 1,000 only about 500 of
    # them hold an entry at any time, so memory must stop growing once the cache is
    # full, however many names clients send (it grew by ~150 bytes a name before).
    import tracemalloc

    tracemalloc.start()
    try:
        cache = InMemoryCache(1000)
        full = await _fill_repositories(cache, 0, 5000)  # full, every structure at its steady size
        later = await _fill_repositories(cache, 5000, 35000)
    finally:
        tracemalloc.stop()
    assert later - full < 256 * 1024, f"{later - full} bytes more after 30,000 repositories at capacity 1,000"
    assert len(cache) == 1000


async def test_clear_frees_the_repository_id_and_a_reused_id_holds_nothing_old() -> None:
    cache = InMemoryCache(0)
    d1, d2 = digest(1), digest(2)
    await cache.set_descriptor(d1, Descriptor(OCT, d1, 1), "team/a")
    await cache.set_descriptor(d2, Descriptor(JSON, d2, 2), "team/a")
    await cache.clear(d1, "team/a")
    assert cache.holds(d2, "team/a")
    await cache.clear(d2, "team/a")
    assert not cache.holds(d2, "team/a")
    # "team/a" has no entry left: its id is free, and the next repository reuses it.
    await cache.set_descriptor(d1, Descriptor(OCT, d1, 1), "team/b")
    assert await cache.stat(d1, "team/b") == Descriptor(OCT, d1, 1)
    for repo in ("team/a", "team/c"):
        with pytest.raises(BlobUnknownError):
            await cache.stat(d1, repo)
        with pytest.raises(BlobUnknownError):
            await cache.stat(d2, repo)
    # The repository entry of team/b set the global entry again, as always.
    assert await cache.stat(d1) == Descriptor(OCT, d1, 1)


async def test_an_evicted_repository_does_not_leak_into_the_one_reusing_its_id() -> None:
    cache = InMemoryCache(4)
    shared = digest(0)
    await cache.set_descriptor(shared, Descriptor(OCT, shared, 0), "team/old")
    for i in range(1, 20):  # evicts team/old's only entry (and the global one)
        await cache.set_descriptor(digest(i), Descriptor(OCT, digest(i), i))
    assert not cache.holds(shared, "team/old")
    for i in range(20, 40):  # new repositories take the freed ids
        await cache.set_descriptor(shared, Descriptor(JSON, shared, 0), f"team/new-{i}")
        await cache.set_descriptor(digest(i), Descriptor(OCT, digest(i), i), f"team/new-{i}")
    with pytest.raises(BlobUnknownError):
        await cache.stat(shared, "team/old")
    assert await cache.stat(digest(39), "team/new-39") == Descriptor(OCT, digest(39), 39)
    with pytest.raises(BlobUnknownError):
        await cache.stat(digest(39), "team/new-38")


async def test_zero_capacity_is_unbounded() -> None:
    cache = InMemoryCache(0)
    for i in range(3000):
        await cache.set_descriptor(digest(i), Descriptor(OCT, digest(i), i))
    assert len(cache) == 3000
    assert await cache.stat_many([digest(0), digest(2999)]) == [
        Descriptor(OCT, digest(0), 0),
        Descriptor(OCT, digest(2999), 2999),
    ]


async def test_repository_entries_count_toward_capacity() -> None:
    cache = InMemoryCache(10)
    for i in range(5):
        await cache.set_descriptor(digest(i), Descriptor(OCT, digest(i), i), REPO)
    assert len(cache) == 10  # 5 global + 5 repository entries
    await cache.set_descriptor(digest(5), Descriptor(OCT, digest(5), 5), REPO)
    assert len(cache) == 10
    assert await cache.stat(digest(5), REPO) == Descriptor(OCT, digest(5), 5)


def test_negative_capacity_is_refused() -> None:
    with pytest.raises(ValueError, match="capacity"):
        InMemoryCache(-1)


# -- scan resistance -------------------------------------------------------------------------


async def test_a_sweep_of_ten_times_capacity_keeps_the_hot_set(layout: Layout, backend: FilesystemBackend) -> None:
    capacity = 500
    cache = InMemoryCache(capacity)
    statter = CachedBlobStatter(cache, backend)
    hot = [layout.put_blob(f"hot {i}".encode()) for i in range(capacity // 10)]
    sweep = [layout.put_blob(f"sweep {i}".encode()) for i in range(capacity * 10)]
    for _ in range(4):  # the working set, hit repeatedly (the first pass misses and fills)
        assert all(isinstance(r, Descriptor) for r in await statter.batch_stat(hot))
    for start in range(0, len(sweep), 1000):  # never-repeated digests, through BatchStat
        results = await statter.batch_stat(sweep[start : start + 1000])
        assert all(isinstance(r, Descriptor) for r in results)
    assert cache.holds(sweep[-1])  # the sweep did go through the cache
    assert len(cache) <= capacity
    kept = sum(cache.holds(d) for d in hot)
    assert kept >= 0.9 * len(hot), f"only {kept} of {len(hot)} hot entries survived the sweep"


async def test_without_hits_a_sweep_does_replace_the_entries(layout: Layout, backend: FilesystemBackend) -> None:
    # the counterpart: entries that were never hit again are not protected
    capacity = 200
    cache = InMemoryCache(capacity)
    statter = CachedBlobStatter(cache, backend)
    cold = [layout.put_blob(f"cold {i}".encode()) for i in range(capacity // 10)]
    await statter.batch_stat(cold)
    sweep = [layout.put_blob(f"sweep {i}".encode()) for i in range(capacity * 3)]
    for start in range(0, len(sweep), 1000):
        await statter.batch_stat(sweep[start : start + 1000])
    assert not any(cache.holds(d) for d in cold)


def _config_with_capacity(root: Path, capacity: int) -> dict[str, object]:
    config = base_config(root)
    config["storage"]["cache"]["blobdescriptorsize"] = capacity  # type: ignore[index]
    return config


async def test_a_sweep_over_the_wire_keeps_the_hot_set(tmp_path: Path, layout: Layout) -> None:
    capacity = 300
    hot = [layout.put_blob(f"hot {i}".encode()) for i in range(capacity // 10)]
    sweep = [layout.put_blob(f"sweep {i}".encode()) for i in range(capacity * 10)]
    proc = ServerProcess(_config_with_capacity(layout.root, capacity), tmp_path).start()
    try:
        async with AsyncDescriptorClient(proc.target) as client:
            for _ in range(4):
                assert all(isinstance(r, Descriptor) for r in await client.batch_stat(hot))
            for start in range(0, len(sweep), 1000):
                await client.batch_stat(sweep[start : start + 1000])
            before = await client.metrics()
            assert all(isinstance(r, Descriptor) for r in await client.batch_stat(hot))
            after = await client.metrics()
        hits = after.hits - before.hits
        assert hits >= 0.9 * len(hot), f"only {hits} of {len(hot)} hot digests were still cached"
    finally:
        proc.stop()


# -- stat_many and the memo ------------------------------------------------------------------


async def test_stat_many_agrees_with_stat_in_every_scope() -> None:
    cache = InMemoryCache(100)
    await cache.set_descriptor(A384, Descriptor(OCT, A256, 10), REPO)  # alias under both
    await cache.set_descriptor(A384, Descriptor(JSON, A256, 10), REPO)  # repository media type
    other = digest(1)
    await cache.set_descriptor(other, Descriptor(OCT, other, 7))
    asked = [A384, A256, other, digest(2), "sha256:nothex", A384]
    for _ in range(5):  # the first answers, then the memoised ones, must agree
        assert await cache.stat_many(asked) == [
            Descriptor(OCT, A256, 10),
            Descriptor(OCT, A256, 10),
            Descriptor(OCT, other, 7),
            None,
            None,
            Descriptor(OCT, A256, 10),
        ]
        assert await cache.stat_many(asked, REPO) == [
            Descriptor(JSON, A256, 10),
            Descriptor(JSON, A256, 10),
            None,  # the repository does not hold it: no fallback to the global entry
            None,
            None,
            Descriptor(JSON, A256, 10),
        ]
    assert await cache.stat_many([], REPO) == []


async def test_repeated_hits_see_every_change() -> None:
    cache = InMemoryCache(100)
    d = digest(1)
    await cache.set_descriptor(d, Descriptor(OCT, d, 1), REPO)
    for _ in range(5):  # saturate the entry so that its answer is memoised
        assert await cache.stat(d, REPO) == Descriptor(OCT, d, 1)
        assert await cache.stat(d) == Descriptor(OCT, d, 1)
    await cache.set_descriptor(d, Descriptor(JSON, d, 2), REPO)
    assert await cache.stat(d, REPO) == Descriptor(JSON, d, 2)
    assert await cache.stat(d) == Descriptor(OCT, d, 2)  # global media type: first write wins
    assert await cache.stat_many([d], REPO) == [Descriptor(JSON, d, 2)]
    await cache.clear(d, REPO)
    assert await cache.stat_many([d], REPO) == [None]
    assert await cache.stat_many([d]) == [None]
    with pytest.raises(BlobUnknownError):
        await cache.stat(d)


async def test_peek_answers_what_stat_answers_and_nothing_an_invalidation_removed() -> None:
    """The statter's synchronous Stat path: a peek is a memoised hit or None, never stale."""
    cache = InMemoryCache(100)
    await cache.set_descriptor(A384, Descriptor(OCT, A256, 10), REPO)  # alias under both
    await cache.set_descriptor(A384, Descriptor(JSON, A256, 10), REPO)
    assert cache.peek(A384) is None  # not memoised yet: the statter asks stat
    for _ in range(5):
        for scope in ("", REPO):
            for d in (A384, A256):
                answer = await cache.stat(d, scope)
                assert cache.peek(d, scope) in (None, answer)
    assert [cache.peek(d, s) for s in ("", REPO) for d in (A384, A256)] == [
        Descriptor(OCT, A256, 10),
        Descriptor(OCT, A256, 10),
        Descriptor(JSON, A256, 10),
        Descriptor(JSON, A256, 10),
    ]
    assert cache.peek(digest(3)) is None
    assert cache.peek(A384, "other/repo") is None
    await cache.invalidate(A384, REPO)  # the alias, in the repository (and its global entry)
    assert (cache.peek(A384, REPO), cache.peek(A384)) == (None, None)
    assert cache.peek(A256) == Descriptor(OCT, A256, 10)
    await cache.invalidate(A256)  # the canonical blob: its aliases go with it
    assert [cache.peek(d, s) for s in ("", REPO) for d in (A384, A256)] == [None] * 4
    for d in (A384, A256):
        with pytest.raises(BlobUnknownError):
            await cache.stat(d)


async def test_an_evicted_memoised_entry_is_unknown() -> None:
    cache = InMemoryCache(20)
    d = digest(0)
    await cache.set_descriptor(d, Descriptor(OCT, d, 1))
    for _ in range(5):
        await cache.stat(d)
    for i in range(1, 200):  # enough churn to give the entry laps until it goes
        await cache.set_descriptor(digest(i), Descriptor(OCT, digest(i), i))
        await cache.stat_many([digest(i)] * 3)  # every newcomer is hot too
    assert not cache.holds(d)
    assert await cache.stat_many([d]) == [None]
    with pytest.raises(BlobUnknownError):
        await cache.stat(d)
    assert len(cache) <= 20


async def test_cache_still_validates_its_input() -> None:
    cache = InMemoryCache(10)
    with pytest.raises(DigestInvalidFormatError):
        await cache.stat("SHA256:" + "A" * 64)


# -- BatchStat through the statter -----------------------------------------------------------


async def test_batch_counts_each_lookup(layout: Layout, backend: FilesystemBackend) -> None:
    cache = InMemoryCache(100)
    statter = CachedBlobStatter(cache, backend)
    cached = layout.put_blob(b"cached")
    await statter.set_descriptor(cached, Descriptor(OCT, cached, 6))
    on_disk = layout.put_blob(b"on disk")
    results = await statter.batch_stat([cached, on_disk, "md5:abc", digest(9)])
    assert results[0] == Descriptor(OCT, cached, 6)
    assert results[1] == Descriptor(OCT, on_disk, 7)
    assert type(results[2]).__name__ == "DigestUnsupportedError"
    assert isinstance(results[3], BlobUnknownError)
    m = statter.metrics
    assert (m.requests, m.hits, m.misses, m.errors) == (3, 1, 2, 0)
    assert cache.holds(on_disk)  # the miss was cached
    results = await statter.batch_stat([cached, on_disk])
    assert (m.requests, m.hits, m.misses) == (5, 3, 2)


class FailingBatchCache(InMemoryCache):
    """A real cache whose batch lookup fails, as an unreachable Redis does."""

    async def stat_many(self, digests: object, repository: str = "") -> list[Descriptor | None]:
        raise ConnectionError("cache unreachable")


async def test_batch_cache_failure_counts_errors_and_writes_nothing(layout: Layout, backend: FilesystemBackend) -> None:
    cache = FailingBatchCache(100)
    statter = CachedBlobStatter(cache, backend)
    a, b = layout.put_blob(b"a"), layout.put_blob(b"bb")
    results = await statter.batch_stat([a, b])
    assert results == [Descriptor(OCT, a, 1), Descriptor(OCT, b, 2)]
    m = statter.metrics
    assert (m.requests, m.hits, m.misses, m.errors) == (2, 0, 2, 2)
    assert not cache.holds(a)
    assert not cache.holds(b)
