"""The cached blob statter: docs/api.md, Semantics, with a real InMemoryCache and FilesystemBackend.

Fakes appear only to inject faults a real part cannot produce on demand: a cache whose
every call fails, a backend that fails, and a backend held at a gate so that calls are
concurrent for certain.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest
from descriptor_client import (
    BackendUnavailableError,
    BatchTooLargeError,
    BlobUnknownError,
    Descriptor,
    DescriptorInvalidError,
    DigestInvalidFormatError,
    RepositoryNameInvalidError,
    UnsupportedError,
)
from descriptor_server.app.components import build_cache
from descriptor_server.backends.filesystem import FilesystemBackend
from descriptor_server.caches import Taken
from descriptor_server.caches.inmemory import InMemoryCache
from descriptor_server.caches.none import NoneCache
from descriptor_server.config import Config
from descriptor_server.config.loading import load
from descriptor_server.core.statter import CachedBlobStatter
from helpers.support import A256, A384, OCT, REPO, Layout

BAD_REPO = "Foo/Bar"


class BrokenCache:
    """A cache whose every call fails as an unreachable Redis does; records the calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def stat(self, digest: str, repository: str = "") -> Descriptor:
        self.calls.append("stat")
        raise ConnectionError("cache unreachable")

    async def set_descriptor(self, digest: str, descriptor: Descriptor, repository: str = "") -> None:
        self.calls.append("set_descriptor")
        raise ConnectionError("cache unreachable")

    async def token(self, fenced: Sequence[str] = ()) -> tuple[int, bool]:
        self.calls.append("token")
        raise ConnectionError("cache unreachable")

    async def fill(self, digest: str, descriptor: Descriptor, repository: str, token: int) -> bool:
        self.calls.append("fill")
        raise ConnectionError("cache unreachable")

    async def invalidate(self, digest: str, repository: str = "") -> tuple[bool, int]:
        self.calls.append("invalidate")
        raise ConnectionError("cache unreachable")

    async def clear(self, digest: str, repository: str = "") -> None:
        self.calls.append("clear")
        raise ConnectionError("cache unreachable")

    async def restore(self, digest: str, taken: Taken, epoch: int) -> bool:
        self.calls.append("restore")
        raise ConnectionError("cache unreachable")

    async def settle(self, digest: str) -> None:
        self.calls.append("settle")
        raise ConnectionError("cache unreachable")


class WriteFailingCache(InMemoryCache):
    """A real in-memory cache whose writes fail (a full or read-only Redis)."""

    async def set_descriptor(self, digest: str, descriptor: Descriptor, repository: str = "") -> None:
        raise ConnectionError("READONLY You can't write against a read only replica")

    async def fill(self, digest: str, descriptor: Descriptor, repository: str, token: int) -> bool:
        raise ConnectionError("READONLY You can't write against a read only replica")


class GatedBackend:
    """A real filesystem backend whose Stat waits at a gate and counts the calls."""

    def __init__(self, inner: FilesystemBackend, *, clear_scopes: tuple[str, ...] = ("", "repo")) -> None:
        self.inner = inner
        self.gate = asyncio.Event()
        self.stat_calls = 0
        self.arrived = asyncio.Event()
        self.clear_scopes = clear_scopes
        self.fail: Exception | None = None
        self.read_first = False  # read the disk before the gate (a slow reply of a stale answer)
        self.gated_calls: int | None = None  # only the first this many reads wait (None: all)

    async def stat(self, digest: str, repository: str = "") -> Descriptor:
        self.stat_calls += 1
        early = await self.inner.stat(digest, repository) if self.read_first else None
        self.arrived.set()
        if self.gated_calls is None or self.stat_calls <= self.gated_calls:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return early if early is not None else await self.inner.stat(digest, repository)

    async def set_descriptor(self, digest: str, descriptor: Descriptor, repository: str = "") -> None:
        await self.inner.set_descriptor(digest, descriptor, repository)

    async def clear(self, digest: str, repository: str = "") -> None:
        await self.inner.clear(digest, repository)

    def supports_clear(self, repository: str) -> bool:
        return ("repo" if repository else "") in self.clear_scopes

    async def close(self) -> None:
        await self.inner.close()


@pytest.fixture
def cache() -> InMemoryCache:
    return InMemoryCache(100)


@pytest.fixture
def statter(cache: InMemoryCache, backend: FilesystemBackend) -> CachedBlobStatter:
    return CachedBlobStatter(cache, backend, delete_enabled=True)


def counters(statter: CachedBlobStatter) -> tuple[int, int, int, int]:
    m = statter.metrics
    return (m.requests, m.hits, m.misses, m.errors)


# -- Stat ---------------------------------------------------------------------------


async def test_miss_goes_to_backend_then_hits(statter: CachedBlobStatter, layout: Layout, cache: InMemoryCache) -> None:
    digest = layout.put_blob(b"hello")
    want = Descriptor(OCT, digest, 5)
    assert await statter.stat(digest) == want
    assert counters(statter) == (1, 0, 1, 0)
    assert await cache.stat(digest) == want  # filled on the miss
    layout.blob_data(digest).unlink()  # the second answer cannot come from disk
    assert await statter.stat(digest) == want
    assert counters(statter) == (2, 1, 1, 0)


async def test_unknown_blob_is_not_cached(statter: CachedBlobStatter, cache: InMemoryCache) -> None:
    with pytest.raises(BlobUnknownError):
        await statter.stat(A256)
    assert len(cache) == 0
    assert counters(statter) == (1, 0, 1, 0)


async def test_repository_miss_also_sets_the_global_entry(
    statter: CachedBlobStatter, layout: Layout, cache: InMemoryCache
) -> None:
    digest = layout.push(REPO, b"layer")
    want = Descriptor(OCT, digest, 5)
    assert await statter.stat(digest, REPO) == want
    assert await cache.stat(digest, REPO) == want
    assert await cache.stat(digest) == want
    assert await statter.stat(digest) == want
    assert counters(statter) == (2, 1, 1, 0)


async def test_repository_stat_never_falls_back_to_the_global_entry(statter: CachedBlobStatter, layout: Layout) -> None:
    digest = layout.put_blob(b"global only")
    assert (await statter.stat(digest)).size == len(b"global only")
    with pytest.raises(BlobUnknownError):
        await statter.stat(digest, REPO)
    await statter.set_descriptor(A256, Descriptor(OCT, A256, 3))
    with pytest.raises(BlobUnknownError):
        await statter.stat(A256, REPO)


async def test_alias_link_is_cached_under_both_digests(
    statter: CachedBlobStatter, layout: Layout, cache: InMemoryCache
) -> None:
    canonical = layout.put_blob(b"aliased")
    key = "sha512:" + "e" * 128
    layout.put_link(REPO, key, canonical)
    want = Descriptor(OCT, canonical, 7)
    assert await statter.stat(key, REPO) == want
    assert await cache.stat(key) == want
    assert await cache.stat(canonical) == want


async def test_backend_error_is_returned_and_nothing_cached(layout: Layout, cache: InMemoryCache) -> None:
    gated = GatedBackend(FilesystemBackend(str(layout.root)))
    gated.gate.set()
    statter = CachedBlobStatter(cache, gated)
    digest = layout.put_blob(b"x")
    gated.fail = OSError(5, "Input/output error")
    with pytest.raises(BackendUnavailableError):
        await statter.stat(digest)
    gated.fail = BackendUnavailableError("down")
    with pytest.raises(BackendUnavailableError, match="down"):
        await statter.stat(digest)
    assert len(cache) == 0
    assert counters(statter) == (2, 0, 2, 0)  # backend failures are not cache errors
    gated.fail = None
    assert (await statter.stat(digest)).size == 1
    await statter.close()


async def test_cache_failure_answers_from_backend_and_never_writes(layout: Layout, backend: FilesystemBackend) -> None:
    broken = BrokenCache()
    statter = CachedBlobStatter(broken, backend, delete_enabled=True)
    digest = layout.push(REPO, b"abc")
    assert await statter.stat(digest) == Descriptor(OCT, digest, 3)
    assert await statter.stat(digest, REPO) == Descriptor(OCT, digest, 3)
    assert "set_descriptor" not in broken.calls
    assert "fill" not in broken.calls  # a failed lookup writes nothing back
    assert counters(statter) == (2, 0, 2, 2)
    # SetDescriptor still succeeds: the cache is best effort.
    await statter.set_descriptor(digest, Descriptor(OCT, digest, 3))
    assert broken.calls.count("token") == 1
    assert statter.metrics.errors == 3
    # ...but invalid input is refused before the cache sees it.
    with pytest.raises(DescriptorInvalidError):
        await statter.set_descriptor(digest, Descriptor(OCT, digest, -1))
    assert broken.calls.count("token") == 1
    # Clear refuses when the cache fails, before the backend changes: a cache that
    # came back still holding the entry would answer Stat for a deleted blob.
    with pytest.raises(BackendUnavailableError, match="nothing was cleared"):
        await statter.clear(digest, REPO)
    assert layout.link(REPO, digest).exists()
    assert broken.calls.count("invalidate") == 1
    assert statter.metrics.errors == 4


async def test_failed_cache_write_after_a_miss_is_not_returned(layout: Layout, backend: FilesystemBackend) -> None:
    statter = CachedBlobStatter(WriteFailingCache(10), backend)
    digest = layout.put_blob(b"abcd")
    assert (await statter.stat(digest)).size == 4
    assert counters(statter) == (1, 0, 1, 1)


async def test_concurrent_misses_reach_the_backend_once(layout: Layout, cache: InMemoryCache) -> None:
    gated = GatedBackend(FilesystemBackend(str(layout.root)))
    statter = CachedBlobStatter(cache, gated)
    digest = layout.put_blob(b"popular")
    n = 20
    calls = [asyncio.ensure_future(statter.stat(digest)) for _ in range(n)]
    await asyncio.wait_for(gated.arrived.wait(), 10)
    await asyncio.sleep(0)  # let every caller reach the flight
    gated.gate.set()
    results = await asyncio.wait_for(asyncio.gather(*calls), 10)
    assert results == [Descriptor(OCT, digest, 7)] * n
    assert gated.stat_calls == 1
    assert counters(statter) == (n, 0, n, 0)
    # Another scope is another flight.
    layout.put_link(REPO, digest)
    assert (await statter.stat(digest, REPO)).digest == digest
    assert gated.stat_calls == 2
    await statter.close()


async def test_coalesced_failure_reaches_every_caller_and_a_retry_refetches(
    layout: Layout, cache: InMemoryCache
) -> None:
    gated = GatedBackend(FilesystemBackend(str(layout.root)))
    statter = CachedBlobStatter(cache, gated)
    digest = layout.put_blob(b"flaky")
    gated.fail = OSError(5, "Input/output error")
    calls = [asyncio.ensure_future(statter.stat(digest)) for _ in range(3)]
    await asyncio.wait_for(gated.arrived.wait(), 10)
    gated.gate.set()
    results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 10)
    assert all(isinstance(r, BackendUnavailableError) for r in results)
    gated.fail = None
    assert (await statter.stat(digest)).size == 5
    assert gated.stat_calls == 2
    await statter.close()


async def test_a_caller_giving_up_does_not_fail_the_others(layout: Layout, cache: InMemoryCache) -> None:
    gated = GatedBackend(FilesystemBackend(str(layout.root)))
    statter = CachedBlobStatter(cache, gated)
    digest = layout.put_blob(b"shared")
    first = asyncio.ensure_future(statter.stat(digest))
    await asyncio.wait_for(gated.arrived.wait(), 10)
    second = asyncio.ensure_future(statter.stat(digest))
    await asyncio.sleep(0)
    first.cancel()
    gated.gate.set()
    assert await asyncio.wait_for(second, 10) == Descriptor(OCT, digest, 6)
    assert first.cancelled()
    assert gated.stat_calls == 1
    await statter.close()


async def test_clear_during_an_inflight_miss_is_not_undone(layout: Layout, cache: InMemoryCache) -> None:
    gated = GatedBackend(FilesystemBackend(str(layout.root)))
    statter = CachedBlobStatter(cache, gated, delete_enabled=True)
    gated.read_first = True
    gated.gated_calls = 1  # the Clear's own check (is it listed?) is not held
    digest = layout.push(REPO, b"racing")
    pending = asyncio.ensure_future(statter.stat(digest, REPO))
    await asyncio.wait_for(gated.arrived.wait(), 10)  # the backend answered, not yet returned
    await statter.clear(digest, REPO)
    assert not layout.link(REPO, digest).exists()
    gated.gate.set()
    assert await asyncio.wait_for(pending, 10) == Descriptor(OCT, digest, 6)  # read before the Clear
    # ...but the stale answer was not written back: the Clear stays in effect.
    with pytest.raises(BlobUnknownError):
        await cache.stat(digest, REPO)
    with pytest.raises(BlobUnknownError):
        await cache.stat(digest)
    with pytest.raises(BlobUnknownError):
        await statter.stat(digest, REPO)
    await statter.close()


async def test_a_stat_after_a_clear_never_joins_a_read_from_before_without_a_cache(layout: Layout) -> None:
    """``blobdescriptor: none`` (a chained service's back, say): nothing is cached, yet a
    Stat that starts after a Clear returned must not share a backend read that began
    before it (lincheck inmemory/slow-delete, chained: the front's SetDescriptor check
    read the link, the front's Clear deleted it through the back, and the front's next
    Stat joined that read at the back and answered present)."""
    gated = GatedBackend(FilesystemBackend(str(layout.root)))
    statter = CachedBlobStatter(NoneCache(), gated, delete_enabled=True)
    gated.read_first = True
    gated.gated_calls = 1  # only the read from before the Clear is held
    digest = layout.push(REPO, b"racing")
    before = asyncio.ensure_future(statter.stat(digest, REPO))
    await asyncio.wait_for(gated.arrived.wait(), 10)  # the link is read, the answer held
    await statter.clear(digest, REPO)
    assert not layout.link(REPO, digest).exists()
    after = asyncio.ensure_future(statter.stat(digest, REPO))
    await asyncio.sleep(0)  # let it reach the flights
    gated.gate.set()
    assert await asyncio.wait_for(before, 10) == Descriptor(OCT, digest, 6)  # read before the Clear
    with pytest.raises(BlobUnknownError):
        await asyncio.wait_for(after, 10)  # started after the Clear returned: its own read
    assert gated.stat_calls == 2
    await statter.close()


async def test_without_a_cache_a_clear_by_another_worker_is_not_missed(layout: Layout) -> None:
    """Workers that can clear (``grpc.workers > 1``, deletion on) share no epoch: the
    none cache built for them shares no read, so a Stat that starts after another
    worker's Clear returned asks the backend itself."""
    gated = GatedBackend(FilesystemBackend(str(layout.root)))
    worker = CachedBlobStatter(build_cache(workers_config(2)), gated, delete_enabled=True)
    other = CachedBlobStatter(build_cache(workers_config(2)), FilesystemBackend(str(layout.root)), delete_enabled=True)
    gated.read_first = True
    gated.gated_calls = 1
    digest = layout.push(REPO, b"racing")
    before = asyncio.ensure_future(worker.stat(digest, REPO))
    await asyncio.wait_for(gated.arrived.wait(), 10)
    await other.clear(digest, REPO)
    after = asyncio.ensure_future(worker.stat(digest, REPO))
    await asyncio.sleep(0)
    gated.gate.set()
    assert await asyncio.wait_for(before, 10) == Descriptor(OCT, digest, 6)
    with pytest.raises(BlobUnknownError):
        await asyncio.wait_for(after, 10)
    # One worker (or deletion off) keeps sharing concurrent misses' reads.
    for config in (workers_config(1), workers_config(2, delete=False)):
        cache = build_cache(config)
        assert await cache.token() == await cache.token()
    await worker.close()
    await other.close()


def workers_config(workers: int, *, delete: bool = True) -> Config:
    environ = {
        "DESCRIPTOR_GRPC_WORKERS": str(workers),
        "DESCRIPTOR_STORAGE_DELETE_ENABLED": str(delete).lower(),
        "DESCRIPTOR_STORAGE_CACHE_BLOBDESCRIPTOR": "none",
    }
    return load(None, environ)


async def test_global_clear_during_an_inflight_repository_miss_is_not_undone(
    layout: Layout, cache: InMemoryCache
) -> None:
    gated = GatedBackend(FilesystemBackend(str(layout.root)))
    statter = CachedBlobStatter(cache, gated, delete_enabled=True)
    gated.read_first = True
    digest = layout.push(REPO, b"deleted blob")
    pending = asyncio.ensure_future(statter.stat(digest, REPO))
    await asyncio.wait_for(gated.arrived.wait(), 10)
    await statter.clear(digest)  # deletes the data while the repository miss holds a stale answer
    assert not layout.blob_data(digest).exists()
    gated.gate.set()
    await asyncio.wait_for(pending, 10)
    # The stale answer must not bring the deleted blob back into the global cache.
    with pytest.raises(BlobUnknownError):
        await cache.stat(digest)
    with pytest.raises(BlobUnknownError):
        await statter.stat(digest)
    await statter.close()


# -- BatchStat ---------------------------------------------------------------------


async def test_batch_stat_in_request_order_with_per_item_errors(statter: CachedBlobStatter, layout: Layout) -> None:
    a = layout.push(REPO, b"a")
    b = layout.push(REPO, b"bb")
    results = await statter.batch_stat([b, "md5:abc", A256, a, b], REPO)
    assert results[0] == Descriptor(OCT, b, 2)
    assert type(results[1]).__name__ == "DigestUnsupportedError"
    assert isinstance(results[2], BlobUnknownError)
    assert results[3] == Descriptor(OCT, a, 1)
    assert results[4] == Descriptor(OCT, b, 2)
    m = statter.metrics
    assert m.hits >= 1  # the repeated digest
    assert m.requests == m.hits + m.misses


async def test_batch_stat_bad_repository_and_size_fail_the_call(
    cache: InMemoryCache, backend: FilesystemBackend
) -> None:
    statter = CachedBlobStatter(cache, backend, max_batch=2)
    with pytest.raises(RepositoryNameInvalidError):
        await statter.batch_stat([A256] * 3, BAD_REPO)  # repository first
    with pytest.raises(BatchTooLargeError):
        await statter.batch_stat([A256] * 3)
    assert len(await statter.batch_stat([A256] * 2)) == 2
    assert await statter.batch_stat([]) == []


# -- SetDescriptor -----------------------------------------------------------------


async def test_set_descriptor_writes_the_cache_only(
    statter: CachedBlobStatter, layout: Layout, cache: InMemoryCache
) -> None:
    await statter.set_descriptor(A384, Descriptor(OCT, A256, 10), REPO)
    assert await statter.stat(A384, REPO) == Descriptor(OCT, A256, 10)
    assert await statter.stat(A256) == Descriptor(OCT, A256, 10)
    assert not (layout.root / "docker").exists()
    assert counters(statter) == (2, 2, 0, 0)


async def test_set_descriptor_global_media_type_first_write_wins(statter: CachedBlobStatter) -> None:
    await statter.set_descriptor(A256, Descriptor(OCT, A256, 10))
    await statter.set_descriptor(A256, Descriptor("application/json", A256, 11))
    assert await statter.stat(A256) == Descriptor(OCT, A256, 11)


# -- validation order ----------------------------------------------------------------


async def test_validation_order_key_digest_repository_descriptor_deletion(
    cache: InMemoryCache, backend: FilesystemBackend
) -> None:
    statter = CachedBlobStatter(cache, backend, delete_enabled=False)
    bad_desc = Descriptor(OCT, A256, -1)
    with pytest.raises(DigestInvalidFormatError):
        await statter.set_descriptor("bad", bad_desc, BAD_REPO)
    with pytest.raises(RepositoryNameInvalidError):
        await statter.set_descriptor(A256, bad_desc, BAD_REPO)
    with pytest.raises(DescriptorInvalidError):
        await statter.set_descriptor(A256, bad_desc, REPO)
    with pytest.raises(DigestInvalidFormatError):
        await statter.clear("bad", BAD_REPO)
    with pytest.raises(RepositoryNameInvalidError):
        await statter.clear(A256, BAD_REPO)
    with pytest.raises(UnsupportedError):
        await statter.clear(A256, REPO)
    with pytest.raises(DigestInvalidFormatError):
        await statter.stat("bad", BAD_REPO)
    with pytest.raises(RepositoryNameInvalidError):
        await statter.stat(A256, BAD_REPO)
    assert len(cache) == 0
    assert counters(statter) == (0, 0, 0, 0)  # refused input is not a lookup


# -- Clear -------------------------------------------------------------------------


async def test_clear_with_deletion_disabled_changes_nothing(
    cache: InMemoryCache, backend: FilesystemBackend, layout: Layout
) -> None:
    statter = CachedBlobStatter(cache, backend, delete_enabled=False)
    digest = layout.push(REPO, b"keep")
    await statter.stat(digest, REPO)
    for scope in ("", REPO):
        with pytest.raises(UnsupportedError, match=r"storage\.delete\.enabled"):
            await statter.clear(digest, scope)
    assert await cache.stat(digest, REPO) == Descriptor(OCT, digest, 4)
    assert layout.link(REPO, digest).exists()
    assert layout.blob_data(digest).exists()


async def test_clear_unsupported_by_backend_is_refused_before_the_cache_changes(
    cache: InMemoryCache, layout: Layout
) -> None:
    gated = GatedBackend(FilesystemBackend(str(layout.root)), clear_scopes=("repo",))
    gated.gate.set()
    statter = CachedBlobStatter(cache, gated, delete_enabled=True)
    await statter.set_descriptor(A256, Descriptor(OCT, A256, 1))
    with pytest.raises(UnsupportedError, match="global"):
        await statter.clear(A256)
    assert await cache.stat(A256) == Descriptor(OCT, A256, 1)
    await statter.close()


async def test_clear_ok_when_only_the_cache_held_it(statter: CachedBlobStatter, cache: InMemoryCache) -> None:
    await statter.set_descriptor(A256, Descriptor(OCT, A256, 1))
    await statter.clear(A256)
    with pytest.raises(BlobUnknownError):
        await cache.stat(A256)
    with pytest.raises(BlobUnknownError):
        await statter.clear(A256)  # now neither holds it


async def test_clear_ok_when_only_the_backend_held_it(statter: CachedBlobStatter, layout: Layout) -> None:
    digest = layout.put_blob(b"on disk")
    await statter.clear(digest)
    assert not layout.blob_data(digest).exists()
    with pytest.raises(BlobUnknownError):
        await statter.stat(digest)


async def test_clear_unknown_everywhere_is_blob_unknown(statter: CachedBlobStatter) -> None:
    with pytest.raises(BlobUnknownError):
        await statter.clear(A256)
    with pytest.raises(BlobUnknownError):
        await statter.clear(A256, REPO)


async def test_repository_clear_removes_link_membership_and_global_cache_entry(
    statter: CachedBlobStatter, layout: Layout, cache: InMemoryCache
) -> None:
    digest = layout.push(REPO, b"soft delete")
    other = "other/repo"
    layout.put_link(other, digest)
    await statter.stat(digest, REPO)
    await statter.stat(digest, other)
    await statter.clear(digest, REPO)
    assert not layout.link(REPO, digest).exists()
    with pytest.raises(BlobUnknownError):
        await cache.stat(digest)  # the global cache entry went too
    with pytest.raises(BlobUnknownError):
        await statter.stat(digest, REPO)
    # The data stays (distribution's soft delete) and other repositories still hold it.
    assert await statter.stat(digest) == Descriptor(OCT, digest, 11)
    assert await statter.stat(digest, other) == Descriptor(OCT, digest, 11)
    with pytest.raises(BlobUnknownError):
        await statter.stat(digest, REPO)


async def test_clear_acts_on_the_key_digest_only(statter: CachedBlobStatter, cache: InMemoryCache) -> None:
    await statter.set_descriptor(A384, Descriptor(OCT, A256, 10))
    await statter.clear(A384)
    with pytest.raises(BlobUnknownError):
        await cache.stat(A384)
    assert await cache.stat(A256) == Descriptor(OCT, A256, 10)


async def test_a_revalidate_whose_read_began_before_a_clear_does_not_write_the_blob_back(tmp_path: Path) -> None:
    """Revalidate writes back under the same token rule as a miss: its backend read began
    before the Clear, so once the Clear has returned its answer is stale and not cached."""
    layout = Layout(tmp_path)
    digest = layout.put_blob(b"revalidated while cleared")
    gated = GatedBackend(FilesystemBackend(str(layout.root)))
    gated.read_first = True  # the backend answers "present" before the Clear deletes
    gated.gated_calls = 1  # only the Revalidate's read waits; the Clear's own calls pass
    statter = CachedBlobStatter(InMemoryCache(100), gated, delete_enabled=True)
    revalidation = asyncio.ensure_future(statter.revalidate(digest))
    await gated.arrived.wait()
    await statter.clear(digest)  # OK: the blob is deleted
    gated.gate.set()
    assert (await revalidation).digest == digest  # it answers what it read ...
    with pytest.raises(BlobUnknownError):
        await statter.stat(digest)  # ... but never caches it after the Clear returned
