"""Bounded staleness: with ``storage.cache.revalidate``, an entry removed behind the cache's
back stops being answered within the interval plus one backend round trip.

Real parts: the in-memory and Redis caches over distribution's on-disk layout, the real
server process, and Debian's registry 2.8 sharing the Redis and the storage.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from descriptor_client import BlobUnknownError, Descriptor, DescriptorClient
from descriptor_server.backends import Backend
from descriptor_server.backends.filesystem import FilesystemBackend
from descriptor_server.caches.inmemory import InMemoryCache
from descriptor_server.core import statter as statter_module
from descriptor_server.core.revalidate import Revalidator
from descriptor_server.core.statter import CachedBlobStatter
from helpers.backend_support import RegistryProcess, push_blob, registry_available
from helpers.gates import GatedBackend
from helpers.redis_servers import RedisProcess, flush
from helpers.support import OCT, REPO, Layout, base_config, running_server, wait_for

INTERVAL = 0.2


class FailingBackend:
    """``inner`` whose reads fail as a storage briefly down does (the fault injected)."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner

    async def stat(self, digest: str, repository: str = "") -> Descriptor:
        raise OSError("storage unreachable")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_revalidator_due_confirmed_bounded_and_rate_limited() -> None:
    clock = Clock()
    r = Revalidator(60.0, rate=2, capacity=2, clock=clock)
    assert not r.due(("a", ""))  # first seen: counts as confirmed now, due one interval later
    clock.now += 59
    assert not r.due(("a", ""))
    clock.now += 1
    assert r.due(("a", ""))
    r.confirmed(("a", ""))
    assert not r.due(("a", ""))
    r.confirmed(("b", ""))
    r.confirmed(("c", ""))
    assert len(r) == 2  # the least recently confirmed was forgotten
    assert not r.due(("a", ""))  # seen again as new ...
    clock.now += 60
    assert r.due(("a", ""))  # ... and due one interval later
    assert [r.allow(), r.allow(), r.allow()] == [True, True, False]
    clock.now += 0.5
    assert r.allow()
    assert not r.allow()


async def settle(statter: CachedBlobStatter) -> None:
    """Until no flight (miss or check) and no background task of the statter is under way."""
    async with asyncio.timeout(10):
        while statter._background or statter._inflight or statter._checks:
            await asyncio.gather(
                *statter._background, *(f.task for f in statter._checks.values() if f.task), return_exceptions=True
            )
            await asyncio.sleep(0)


def revalidating(
    layout: Layout, clock: Clock, rate: int = 100
) -> tuple[CachedBlobStatter, InMemoryCache, GatedBackend]:
    """A statter over the real layout whose revalidation clock the test moves; the
    backend's reads are counted (and held when the test says)."""
    cache = InMemoryCache(1000)
    backend = GatedBackend(FilesystemBackend(str(layout.root)))
    revalidator = Revalidator(INTERVAL, rate, clock=clock)
    return CachedBlobStatter(cache, backend, delete_enabled=True, revalidator=revalidator), cache, backend


def collect_behind_the_cache(layout: Layout, digest: str) -> None:
    """What distribution's ``registry garbage-collect`` on shared storage does to the blob."""
    layout.blob_data(digest).unlink()
    layout.link(REPO, digest).unlink()


@pytest.mark.parametrize("scope", ["", REPO])
async def test_a_due_entry_whose_blob_is_gone_answers_blob_unknown_on_its_first_hit(layout: Layout, scope: str) -> None:
    clock = Clock()
    statter, cache, backend = revalidating(layout, clock)
    digest = layout.push(REPO, b"collected behind the cache")
    assert await statter.stat(digest, scope) == Descriptor(OCT, digest, 26)  # a miss, written back: confirmed
    collect_behind_the_cache(layout, digest)
    clock.now += INTERVAL - 0.01
    assert await statter.stat(digest, scope) == Descriptor(OCT, digest, 26)  # within the interval: cached
    assert (backend.reads.arrived, statter.metrics.revalidations) == (1, 0)
    clock.now += 0.01
    with pytest.raises(BlobUnknownError):
        await statter.stat(digest, scope)  # the first hit past the interval is checked before it is answered
    m = statter.metrics
    assert (m.revalidations, m.revalidation_removed, backend.reads.arrived) == (1, 1, 2)
    with pytest.raises(BlobUnknownError):
        await cache.stat(digest, scope)  # removed, with Clear's semantics
    with pytest.raises(BlobUnknownError):
        await statter.stat(digest, scope)
    await statter.close()


@pytest.mark.parametrize("scope", ["", REPO])
async def test_a_memoised_hit_is_peeked_and_counted_until_it_is_due(layout: Layout, scope: str) -> None:
    """The servicer's synchronous Stat path (peek) counts as stat does, and leaves a due
    entry to stat, which checks it against the backend before answering."""
    clock = Clock()
    statter, cache, backend = revalidating(layout, clock)
    digest = layout.push(REPO, b"memoised, then collected")
    m = statter.metrics
    assert statter.peek(digest, scope) is None  # not cached: nothing answered, nothing counted
    assert (m.requests, m.hits, m.misses) == (0, 0, 0)
    await statter.stat(digest, scope)  # a miss, written back
    hits = 0
    while cache.peek(digest, scope) is None:  # hit until memoised
        assert hits < 5
        await statter.stat(digest, scope)
        hits += 1
    assert statter.peek(digest, scope) == Descriptor(OCT, digest, 24)
    assert (m.requests, m.hits, m.misses) == (hits + 2, hits + 1, 1)
    collect_behind_the_cache(layout, digest)
    clock.now += INTERVAL
    assert statter.peek(digest, scope) is None  # due: stat answers it, after its check
    assert (m.requests, m.hits, m.revalidations, backend.reads.arrived) == (hits + 2, hits + 1, 0, 1)
    with pytest.raises(BlobUnknownError):
        await statter.stat(digest, scope)
    assert (m.requests, m.hits, m.revalidations, m.revalidation_removed) == (hits + 3, hits + 2, 1, 1)
    assert statter.peek(digest, scope) is None
    await statter.close()


async def test_a_due_entry_still_stored_answers_present_and_is_confirmed(layout: Layout) -> None:
    clock = Clock()
    statter, cache, backend = revalidating(layout, clock)
    digest = layout.put_blob(b"still here")
    await statter.stat(digest)
    clock.now += INTERVAL
    assert await statter.stat(digest) == Descriptor(OCT, digest, 10)
    assert (statter.metrics.revalidations, backend.reads.arrived) == (1, 2)
    assert await cache.stat(digest) == Descriptor(OCT, digest, 10)
    clock.now += INTERVAL - 0.01
    await statter.stat(digest)
    assert backend.reads.arrived == 2  # confirmed by the check: not due again within the interval
    await statter.close()


async def test_concurrent_due_hits_make_one_backend_read(layout: Layout) -> None:
    clock = Clock()
    statter, _, backend = revalidating(layout, clock)
    kept, gone = layout.put_blob(b"kept"), layout.push(REPO, b"gone")
    await statter.batch_stat([kept, gone])
    collect_behind_the_cache(layout, gone)
    clock.now += INTERVAL
    backend.reads.hold()
    hits = asyncio.gather(*(statter.stat(d) for _ in range(20) for d in (kept, gone)), return_exceptions=True)
    await backend.reads.reached(4)  # 2 misses before, then one check per key ...
    backend.reads.open()
    answers = await hits
    assert backend.reads.arrived == 4  # ... shared by the 20 hits of each
    assert statter.metrics.revalidations == 2
    assert answers[0::2] == [Descriptor(OCT, kept, 4)] * 20
    assert all(isinstance(a, BlobUnknownError) for a in answers[1::2])
    await statter.close()


async def test_a_clear_during_the_check_wins(layout: Layout) -> None:
    """The check read "present" just before a Clear deleted the blob; the Clear returns
    OK while the check is held. The hit (which began before the Clear returned) may answer
    what was read, but the check's write-back fails its compare-and-set: the Clear stands."""
    clock = Clock()
    statter, cache, backend = revalidating(layout, clock)
    digest = layout.push(REPO, b"cleared while checked")
    await statter.stat(digest, REPO)
    clock.now += INTERVAL
    backend.reads.hold()
    hit = asyncio.ensure_future(statter.stat(digest, REPO))
    await backend.reads.reached(2)  # the check has read the backend
    await statter.clear(digest, REPO)
    assert not layout.link(REPO, digest).exists()
    backend.reads.open()
    assert await hit == Descriptor(OCT, digest, 21)
    await settle(statter)
    for scope in (REPO, ""):
        with pytest.raises(BlobUnknownError):
            await cache.stat(digest, scope)
    with pytest.raises(BlobUnknownError):
        await statter.stat(digest, REPO)
    await statter.close()


async def test_an_entry_first_seen_is_not_checked_on_its_first_hit(layout: Layout) -> None:
    """Primed by another process (here written to the cache directly) for a blob this
    backend does not hold: answered, not checked, until one interval after it was first seen."""
    clock = Clock()
    statter, cache, backend = revalidating(layout, clock)
    digest = layout.put_blob(b"primed elsewhere")
    layout.blob_data(digest).unlink()
    await cache.set_descriptor(digest, Descriptor(OCT, digest, 16))
    clock.now += 10 * INTERVAL
    assert await statter.stat(digest) == Descriptor(OCT, digest, 16)
    assert backend.reads.arrived == 0
    clock.now += INTERVAL
    with pytest.raises(BlobUnknownError):
        await statter.stat(digest)
    assert backend.reads.arrived == 1
    await statter.close()


async def test_a_check_the_backend_fails_answers_from_the_cache_and_stays_due(layout: Layout) -> None:
    clock = Clock()
    statter, _, backend = revalidating(layout, clock)
    digest = layout.put_blob(b"storage briefly down")
    await statter.stat(digest)
    clock.now += INTERVAL
    backend.inner = FailingBackend(backend.inner)
    assert await statter.stat(digest) == Descriptor(OCT, digest, 20)  # not known gone: answered
    assert statter.metrics.revalidation_failed == 1
    assert await statter.stat(digest) == Descriptor(OCT, digest, 20)
    assert statter.metrics.revalidation_failed == 2  # still due: checked again on the next hit
    backend.inner = backend.inner.inner
    layout.blob_data(digest).unlink()
    with pytest.raises(BlobUnknownError):
        await statter.stat(digest)
    await statter.close()


async def test_a_check_slower_than_the_wait_answers_from_the_cache_and_still_removes(
    layout: Layout, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(statter_module, "CHECK_WAIT", 0.05)
    clock = Clock()
    statter, cache, backend = revalidating(layout, clock)
    digest = layout.put_blob(b"a hung storage")
    await statter.stat(digest)
    layout.blob_data(digest).unlink()
    clock.now += INTERVAL
    backend.reads.hold()
    assert await statter.stat(digest) == Descriptor(OCT, digest, 14)  # answered after the wait
    assert await statter.stat(digest) == Descriptor(OCT, digest, 14)  # joins the late check: at once
    assert backend.reads.arrived == 2
    backend.reads.open()
    await settle(statter)
    with pytest.raises(BlobUnknownError):
        await cache.stat(digest)  # what the check found removes the entry all the same
    await statter.close()


async def test_batch_stat_checks_its_due_entries_before_answering(layout: Layout) -> None:
    clock = Clock()
    statter, _, backend = revalidating(layout, clock)
    kept, gone = layout.put_blob(b"kept"), layout.put_blob(b"gone")
    await statter.batch_stat([kept, gone])
    layout.blob_data(gone).unlink()
    clock.now += INTERVAL
    answers = await statter.batch_stat([kept, gone])
    assert answers[0] == Descriptor(OCT, kept, 4)
    assert isinstance(answers[1], BlobUnknownError)
    assert backend.reads.arrived == 4
    await statter.close()


async def test_revalidations_are_rate_limited(layout: Layout) -> None:
    clock = Clock()
    statter, _, _ = revalidating(layout, clock, rate=5)
    digests = [layout.put_blob(f"blob {i}".encode()) for i in range(20)]
    await statter.batch_stat(digests)
    clock.now += INTERVAL
    answers = await statter.batch_stat(digests)  # 20 entries due at once
    assert all(isinstance(a, Descriptor) for a in answers)
    m = statter.metrics
    assert (m.revalidations, m.revalidation_skipped) == (5, 15)  # over the limit: answered from the cache
    await statter.close()


def test_revalidate_setting_in_the_server(tmp_path: Path, layout: Layout) -> None:
    config = base_config(layout.root)
    config["storage"]["cache"]["revalidate"] = "300ms"
    digest = layout.push(REPO, b"gc'd while cached")
    with running_server(config, tmp_path) as server, DescriptorClient(server.target) as client:
        client.stat(digest, REPO)
        layout.blob_data(digest).unlink()
        layout.link(REPO, digest).unlink()
        start = time.monotonic()

        def gone() -> bool:
            try:
                client.stat(digest, REPO)
            except BlobUnknownError:
                return True
            return False

        wait_for(gone, timeout=10, interval=0.05)
        # within the interval plus one backend round trip (and the polling step)
        assert time.monotonic() - start < 0.3 + 1.0


def stat_or_unknown(client: DescriptorClient, digest: str, repository: str = "") -> Descriptor | None:
    try:
        return client.stat(digest, repository)
    except BlobUnknownError:
        return None


@pytest.mark.skipif(not registry_available(), reason="docker-registry is not installed")
def test_garbage_collection_behind_a_shared_redis_heals_and_a_repush_is_answered(
    tmp_path: Path, redis_standalone: RedisProcess
) -> None:
    """distribution 2.8 and the service share one Redis and one storage; GC deletes the blob data.

    The Redis entry outlives the data (distribution #1803: re-pushes were ignored); the
    service's revalidation removes it, for the registry too, and a re-push is answered.
    """
    flush(redis_standalone)
    registry = RegistryProcess(tmp_path / "registry", redis=redis_standalone.addr)
    try:
        content = b"a layer that garbage collection removes"
        digest = push_blob(registry.url, REPO, content)
        assert httpx.head(f"{registry.url}/v2/{REPO}/blobs/{digest}").status_code == 200
        config = base_config(registry.root, cache="redis")
        config["redis"] = {"addrs": [redis_standalone.addr]}
        config["storage"]["cache"]["revalidate"] = "300ms"
        with running_server(config, tmp_path) as server, DescriptorClient(server.target) as client:
            assert client.stat(digest) == Descriptor(OCT, digest, len(content))  # from the shared Redis
            out = registry.garbage_collect()  # the blob is in no manifest: its data is deleted
            assert not (
                registry.root / "docker/registry/v2/blobs/sha256" / digest[7:9] / digest[7:] / "data"
            ).exists(), out
            assert client.stat(digest) is not None  # still cached: within the interval
            time.sleep(0.35)
            wait_for(lambda: stat_or_unknown(client, digest) is None, timeout=10, interval=0.05)
            # Removed from Redis with Clear's semantics: the registry no longer sees it either.
            assert redis_standalone.client().exists(f"blobs::{digest}") == 0
            digest_again = push_blob(registry.url, REPO, content)  # the re-push
            assert digest_again == digest
            assert httpx.head(f"{registry.url}/v2/{REPO}/blobs/{digest}").status_code == 200
            assert httpx.get(f"{registry.url}/v2/{REPO}/blobs/{digest}", follow_redirects=True).content == content
            assert client.stat(digest, REPO) == Descriptor(OCT, digest, len(content))
            assert client.stat(digest) == Descriptor(OCT, digest, len(content))
    finally:
        registry.stop()
