"""Clear is final: once it has returned OK, no Stat that starts afterwards answers the blob.

Neither by a write-back of a backend read that raced the Clear, nor by joining a
coalesced read that began before it; and a Clear refused at delete time (UNSUPPORTED,
UNAVAILABLE) leaves the cache as it was. Each case runs against the real caches
(in-memory, Redis on a single server and on a Cluster) and a chained service (a
real second server as the backend), with the backend held at gates.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from descriptor_client import (
    AsyncDescriptorClient,
    BackendUnavailableError,
    BlobUnknownError,
    Descriptor,
    DescriptorClient,
    UnsupportedError,
)
from descriptor_server.backends import Backend
from descriptor_server.backends.descriptorservice import DescriptorServiceBackend
from descriptor_server.backends.filesystem import FilesystemBackend
from descriptor_server.caches import Cache
from descriptor_server.caches.inmemory import InMemoryCache
from descriptor_server.caches.redis import from_config
from descriptor_server.core.statter import CachedBlobStatter
from descriptor_server.wrappers.bounds import BoundedBackend
from helpers.gates import GatedBackend
from helpers.redis_servers import RedisProcess, flush
from helpers.support import OCT, REPO, Layout, ServerProcess, base_config, digest_of
from helpers.targets_redis import redis_config


@pytest.fixture
def back(tmp_path: Path, layout: Layout) -> Iterator[ServerProcess]:
    """A second service over the same storage: the chained case's backend."""
    (tmp_path / "back").mkdir()
    server = ServerProcess(base_config(layout.root), tmp_path / "back").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["inmemory", "redis", "redis-cluster", "chained"])
async def setup(
    request: pytest.FixtureRequest, layout: Layout, tmp_path: Path
) -> AsyncIterator[tuple[CachedBlobStatter, GatedBackend, Cache]]:
    kind = request.param
    cache: Cache
    inner: Backend = FilesystemBackend(str(layout.root))
    if kind == "inmemory":
        cache = InMemoryCache(1000)
    elif kind == "redis":
        server: RedisProcess = request.getfixturevalue("redis_standalone")
        flush(server)
        cache = from_config(redis_config([server.addr]))
    elif kind == "redis-cluster":
        nodes: list[RedisProcess] = request.getfixturevalue("redis_cluster")
        flush(*nodes)
        cache = from_config(redis_config([n.addr for n in nodes]))
    else:
        back: ServerProcess = request.getfixturevalue("back")
        cache = InMemoryCache(1000)
        inner = DescriptorServiceBackend(AsyncDescriptorClient(back.target, timeout=10))
    gated = GatedBackend(inner)
    statter = CachedBlobStatter(cache, gated, delete_enabled=True)
    try:
        yield statter, gated, cache
    finally:
        gated.reads.open()
        gated.deletes.open()
        await statter.close()


Setup = tuple[CachedBlobStatter, GatedBackend, Cache]


async def eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Whether ``predicate`` holds within ``timeout`` (checked every 10 ms, the loop running)."""
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()


async def eventually_unknown(statter: CachedBlobStatter, digest: str, scope: str, timeout: float = 10.0) -> bool:
    for _ in range(int(timeout / 0.01)):
        if await unknown(statter, digest, scope):
            return True
        await asyncio.sleep(0.01)
    return False


async def unknown(statter: CachedBlobStatter, digest: str, repository: str = "") -> bool:
    try:
        await statter.stat(digest, repository)
    except BlobUnknownError:
        return True
    return False


@pytest.mark.parametrize("scope", ["", REPO])
async def test_a_read_racing_the_delete_does_not_write_the_blob_back(setup: Setup, layout: Layout, scope: str) -> None:
    statter, gated, _ = setup
    digest = layout.push(REPO, f"raced the delete {scope}".encode())
    gated.deletes.hold()
    clear = asyncio.ensure_future(statter.clear(digest, scope))
    await gated.deletes.reached()  # the cache is cleared; the backend still holds the blob
    racing = await statter.stat(digest, scope)  # a miss that reads the blob before it is deleted
    assert racing == Descriptor(OCT, digest, len(f"raced the delete {scope}"))
    gated.deletes.open()
    await asyncio.wait_for(clear, 10)  # Clear returned OK
    assert await unknown(statter, digest, scope)
    assert await unknown(statter, digest, REPO)


@pytest.mark.parametrize("scope", ["", REPO])
async def test_a_stat_after_the_clear_does_not_join_a_read_from_before_it(
    setup: Setup, layout: Layout, scope: str
) -> None:
    statter, gated, _ = setup
    digest = layout.push(REPO, f"read before the clear {scope}".encode())
    gated.reads.hold()
    before = asyncio.ensure_future(statter.stat(digest, scope))
    await gated.reads.reached()  # the backend answered "exists"; the answer is held
    await statter.clear(digest, scope)  # returns OK
    after = asyncio.ensure_future(statter.stat(digest, scope))  # must read afresh, not join `before`
    await gated.reads.reached(2)
    gated.reads.open()
    with pytest.raises(BlobUnknownError):
        await asyncio.wait_for(after, 10)
    assert isinstance(await asyncio.wait_for(before, 10), Descriptor)  # it began before the Clear
    assert await unknown(statter, digest, scope)  # and it wrote nothing back


async def test_a_clear_refused_at_delete_time_leaves_the_cache_as_it_was(setup: Setup, layout: Layout) -> None:
    statter, gated, cache = setup
    digest = layout.push(REPO, b"kept by a refused clear")
    await statter.set_descriptor(digest, Descriptor(OCT, digest, 23))
    await statter.set_descriptor(digest, Descriptor("application/vnd.oci.image.layer.v1.tar", digest, 23), REPO)
    gated.fail_delete = UnsupportedError("the registry answered 405")
    with pytest.raises(UnsupportedError):
        await statter.clear(digest, REPO)
    hits = statter.metrics.hits
    assert (await statter.stat(digest, REPO)).media_type == "application/vnd.oci.image.layer.v1.tar"
    assert (await statter.stat(digest)).media_type == OCT
    assert statter.metrics.hits == hits + 2  # answered by the cache: nothing was taken from it
    assert (await cache.stat(digest, REPO)).size == 23


async def test_a_clear_whose_delete_broke_says_the_outcome_is_unknown_and_keeps_the_entries_removed(
    setup: Setup, layout: Layout
) -> None:
    """A broken call may have deleted: a stale entry would cost a failed pull, a miss only a read."""
    statter, gated, cache = setup
    digest = layout.push(REPO, b"kept by a refused clear")
    await statter.set_descriptor(digest, Descriptor("application/vnd.oci.image.layer.v1.tar", digest, 23), REPO)
    gated.fail_delete = OSError("registry unreachable")
    with pytest.raises(BackendUnavailableError, match="outcome is unknown"):
        await statter.clear(digest, REPO)
    with pytest.raises(BlobUnknownError):
        await cache.stat(digest, REPO)
    with pytest.raises(BlobUnknownError):
        await cache.stat(digest)
    assert await statter.stat(digest, REPO) == Descriptor(OCT, digest, 23)  # still there: read afresh


def test_a_chained_service_with_deletion_off_leaves_the_front_cache_as_it_was(tmp_path: Path, layout: Layout) -> None:
    """The front learns only at delete time that the back cannot delete (UNSUPPORTED)."""
    (tmp_path / "back").mkdir()
    digest = layout.push(REPO, b"kept in front")
    back = ServerProcess(base_config(layout.root, delete=False), tmp_path / "back").start()
    try:
        front_config = base_config(layout.root)
        front_config["storage"] = {
            "descriptorservice": {"target": back.target},
            "cache": {"blobdescriptor": "inmemory"},
            "delete": {"enabled": True},
        }
        front = ServerProcess(front_config, tmp_path).start()
        try:
            with DescriptorClient(front.target) as client:
                client.stat(digest, REPO)  # cached in front
                with pytest.raises(UnsupportedError):
                    client.clear(digest, REPO)
                hits = client.metrics().hits
                assert client.stat(digest, REPO).size == len(b"kept in front")
                assert client.metrics().hits == hits + 1
        finally:
            front.stop()
    finally:
        back.stop()
    assert layout.link(REPO, digest).exists()


# -- across processes sharing one Redis ---------------------------------------------------


@pytest.fixture(params=["redis", "redis-cluster"])
async def two_processes(
    request: pytest.FixtureRequest, layout: Layout
) -> AsyncIterator[tuple[CachedBlobStatter, GatedBackend, CachedBlobStatter]]:
    """Two statters over one Redis and one storage, as two workers or two replicas are:
    each with its own cache client, flights and backend; the first one's reads gated."""
    if request.param == "redis":
        server: RedisProcess = request.getfixturevalue("redis_standalone")
        flush(server)
        addrs = [server.addr]
    else:
        nodes: list[RedisProcess] = request.getfixturevalue("redis_cluster")
        flush(*nodes)
        addrs = [n.addr for n in nodes]
    gated = GatedBackend(FilesystemBackend(str(layout.root)))
    first = CachedBlobStatter(from_config(redis_config(addrs)), gated, delete_enabled=True)
    second = CachedBlobStatter(
        from_config(redis_config(addrs)), FilesystemBackend(str(layout.root)), delete_enabled=True
    )
    try:
        yield first, gated, second
    finally:
        gated.reads.open()
        await first.close()
        await second.close()


@pytest.mark.parametrize("scope", ["", REPO])
async def test_a_read_begun_before_another_processes_clear_does_not_write_the_blob_back(
    two_processes: tuple[CachedBlobStatter, GatedBackend, CachedBlobStatter], layout: Layout, scope: str
) -> None:
    first, gated, second = two_processes
    content = f"read in one process, cleared in another {scope}".encode()
    digest = layout.push(REPO, content)
    gated.reads.hold()
    before = asyncio.ensure_future(first.stat(digest, scope))
    await gated.reads.reached()  # the first process read "exists"; its write-back is held
    await second.clear(digest, scope)  # the second process clears: cache and storage
    gated.reads.open()
    assert await asyncio.wait_for(before, 10) == Descriptor(OCT, digest, len(content))  # began before
    # Neither process answers the deleted blob: the write-back was fenced off.
    assert await unknown(second, digest, scope)
    assert await unknown(first, digest, scope)
    assert first.metrics.errors == second.metrics.errors == 0


async def test_setdescriptor_after_a_clear_is_not_fenced(
    two_processes: tuple[CachedBlobStatter, GatedBackend, CachedBlobStatter], layout: Layout
) -> None:
    """The fence stops write-backs only: a registry re-pushing the blob primes the cache."""
    first, _, second = two_processes
    digest = layout.push(REPO, b"cleared, then pushed again")
    await second.clear(digest, REPO)
    desc = Descriptor(OCT, digest, len(b"cleared, then pushed again"))
    layout.push(REPO, b"cleared, then pushed again")
    await first.set_descriptor(digest, desc, REPO)
    assert await second.cache.stat(digest, REPO) == desc
    assert await first.stat(digest, REPO) == desc


async def test_an_entry_written_during_the_delete_by_a_process_ignoring_the_fence_is_removed(
    two_processes: tuple[CachedBlobStatter, GatedBackend, CachedBlobStatter], layout: Layout
) -> None:
    """A distribution registry sharing the Redis writes without looking at the fence: the
    Clear clears the cache once more after the backend deleted."""
    first, gated, second = two_processes
    content = b"written back by a registry during the delete"
    digest = layout.push(REPO, content)
    gated.deletes.hold()
    clear = asyncio.ensure_future(first.clear(digest, REPO))
    await gated.deletes.reached()  # the cache is cleared; the backend delete is under way
    await second.cache.set_descriptor(digest, Descriptor(OCT, digest, len(content)), REPO)  # unfenced writer
    gated.deletes.open()
    await asyncio.wait_for(clear, 10)
    assert await unknown(second, digest, REPO)
    with pytest.raises(BlobUnknownError):  # nothing the registry wrote is left in Redis
        await second.cache.stat(digest, REPO)


# -- the holes of issue 21 item 4: each failed before the generation rule ------------------


def _unknown_outcome_setup(statter: CachedBlobStatter, gated: GatedBackend) -> CachedBlobStatter:
    """The same cache and gated backend behind ``storage.backendtimeout`` (0.3 s)."""
    return CachedBlobStatter(statter.cache, BoundedBackend(gated, timeout=0.3), delete_enabled=True)


@pytest.mark.parametrize("scope", ["", REPO])
async def test_a_clear_past_the_backend_timeout_never_leaves_the_deleted_blob_answered(
    setup: Setup, layout: Layout, scope: str
) -> None:
    """The delete outlives ``storage.backendtimeout``: the Clear says the outcome is
    unknown, keeps the entries removed, and when the abandoned delete ends, invalidates
    again what a Stat wrote back meanwhile."""
    plain, gated, _ = setup
    statter = _unknown_outcome_setup(plain, gated)
    content = f"deleted after the timeout {scope}".encode()
    digest = layout.push(REPO, content)
    assert await statter.stat(digest, scope) == Descriptor(OCT, digest, len(content))  # cached
    gated.deletes.hold()
    with pytest.raises(BackendUnavailableError, match="outcome is unknown"):
        await statter.clear(digest, scope)
    # The backend still holds the blob: a Stat reads it and writes it back.
    assert await statter.stat(digest, scope) == Descriptor(OCT, digest, len(content))
    gated.deletes.open()  # the abandoned delete now runs and removes the blob
    gone = layout.blob_data(digest) if not scope else layout.link(REPO, digest)
    assert await eventually(lambda: not gone.exists())
    # Once the delete has ended, the entry written back meanwhile is invalidated: the
    # cache stops answering it (before, it answered for good).
    assert await eventually_unknown(statter, digest, scope)
    assert await unknown(statter, digest, REPO)


async def test_a_refused_clear_does_not_restore_over_a_concurrent_clear(setup: Setup, layout: Layout) -> None:
    """Two Clears of one digest: the one the backend refuses, after the other deleted,
    must not put back what it had taken."""
    refused, gated, cache = setup
    content = b"cleared by the other clear"
    digest = layout.push(REPO, content)
    assert await refused.stat(digest, REPO) == Descriptor(OCT, digest, len(content))  # cached
    gated.deletes.hold()
    gated.fail_delete = UnsupportedError("the registry answered 405")
    first = asyncio.ensure_future(refused.clear(digest, REPO))
    await gated.deletes.reached()  # the first Clear took the entries; its delete is held
    other = CachedBlobStatter(cache, FilesystemBackend(str(layout.root)), delete_enabled=True)
    if isinstance(gated.inner, DescriptorServiceBackend):  # chained: the other Clear goes through the back too
        other = CachedBlobStatter(cache, gated.inner, delete_enabled=True)
    await other.clear(digest, REPO)  # deletes the link: returns OK
    gated.deletes.open()
    with pytest.raises(UnsupportedError):
        await asyncio.wait_for(first, 10)
    assert await unknown(refused, digest, REPO)
    with pytest.raises(BlobUnknownError):  # nor was the global entry put back
        await cache.stat(digest)


async def test_a_refused_clear_does_not_restore_over_a_concurrent_setdescriptor(setup: Setup, layout: Layout) -> None:
    statter, gated, _ = setup
    digest = layout.push(REPO, b"pushed again during a refused clear")
    size = len(b"pushed again during a refused clear")
    await statter.set_descriptor(digest, Descriptor("application/old", digest, size), REPO)
    gated.deletes.hold()
    gated.fail_delete = UnsupportedError("the registry answered 405")
    clear = asyncio.ensure_future(statter.clear(digest, REPO))
    await gated.deletes.reached()
    await statter.set_descriptor(digest, Descriptor("application/new", digest, size), REPO)  # a push, meanwhile
    gated.deletes.open()
    with pytest.raises(UnsupportedError):
        await asyncio.wait_for(clear, 10)
    assert (await statter.stat(digest, REPO)).media_type == "application/new"  # not the snapshot


@pytest.mark.parametrize("scope", ["", REPO])
async def test_a_stat_after_another_processes_clear_does_not_join_a_read_from_before_it(
    two_processes: tuple[CachedBlobStatter, GatedBackend, CachedBlobStatter], layout: Layout, scope: str
) -> None:
    """Replica A's read began before replica B's Clear; a Stat on A sent after the Clear
    returned reads afresh."""
    first, gated, second = two_processes
    content = f"read on A, cleared on B {scope}".encode()
    digest = layout.push(REPO, content)
    gated.reads.hold()
    before = asyncio.ensure_future(first.stat(digest, scope))
    await gated.reads.reached()  # A's backend read answered "exists"; held
    await second.clear(digest, scope)  # B's Clear returned OK
    after = asyncio.ensure_future(first.stat(digest, scope))
    await gated.reads.reached(2)  # a read of its own, not the one from before
    gated.reads.open()
    with pytest.raises(BlobUnknownError):
        await asyncio.wait_for(after, 10)
    assert await asyncio.wait_for(before, 10) == Descriptor(OCT, digest, len(content))  # began before
    assert await unknown(first, digest, scope)


async def test_a_read_through_an_alias_racing_a_global_clear_does_not_write_the_blob_back(
    setup: Setup, layout: Layout
) -> None:
    """A repository's sha512 link names the sha256 blob: a global Clear of the sha256
    digest stops the write-back of a read of the sha512 one that answered it."""
    statter, gated, _ = setup
    content = b"reachable through a sha512 alias"
    canonical = layout.put_blob(content)
    alias = digest_of(content, "sha512")
    layout.put_link(REPO, alias, target=canonical)
    gated.reads.hold()
    before = asyncio.ensure_future(statter.stat(alias, REPO))
    await gated.reads.reached()  # answered the sha256 blob; held
    await statter.clear(canonical)  # the blob's data is deleted: OK
    gated.reads.open()
    assert await asyncio.wait_for(before, 10) == Descriptor(OCT, canonical, len(content))  # began before
    assert await unknown(statter, alias, REPO)  # not written back under the alias
    assert await unknown(statter, canonical)


async def test_a_global_clear_removes_the_cached_aliases_whose_answer_is_the_blob(setup: Setup, layout: Layout) -> None:
    """An alias entry cached before the Clear: its answer is the deleted blob, so it goes too."""
    statter, _, cache = setup
    content = b"cached under a sha512 alias"
    canonical = layout.put_blob(content)
    alias = digest_of(content, "sha512")
    layout.put_link(REPO, alias, target=canonical)
    desc = Descriptor(OCT, canonical, len(content))
    assert await statter.stat(alias, REPO) == desc  # cached under both digests
    await statter.set_descriptor(alias, desc)  # and the alias's global entry, as a registry sets it
    assert await cache.stat(alias) == desc
    await statter.clear(canonical)
    assert await unknown(statter, alias, REPO)
    with pytest.raises(BlobUnknownError):
        await cache.stat(alias)


async def test_a_repository_clear_answering_blob_unknown_changes_nothing(setup: Setup, layout: Layout) -> None:
    """A token allowed to delete in its own repository cannot drop or fence anyone else's entry."""
    statter, _, cache = setup
    content = b"held by another repository"
    digest = layout.push("other/repo", content)
    desc = Descriptor(OCT, digest, len(content))
    await statter.set_descriptor(digest, desc)
    with pytest.raises(BlobUnknownError):
        await statter.clear(digest, REPO)  # REPO never held it
    hits = statter.metrics.hits
    assert await statter.stat(digest) == desc
    assert statter.metrics.hits == hits + 1  # the global entry is still cached
    _, fenced = await cache.token([digest])
    assert not fenced
    assert await statter.stat(digest, "other/repo") == desc  # a miss, written back (no fence)
    assert await cache.stat(digest, "other/repo") == desc


@pytest.mark.parametrize("scope", ["", REPO])
async def test_a_setdescriptor_arriving_after_the_clear_of_a_deleted_blob_is_dropped(
    setup: Setup, layout: Layout, scope: str
) -> None:
    """A registry's upload commit raced its own DELETE: its SetDescriptor reaches the
    service after the Clear returned. The blob is gone, so the write is dropped."""
    statter, _, _ = setup
    content = f"committed, deleted, then announced {scope}".encode()
    digest = layout.push(REPO, content)
    desc = Descriptor(OCT, digest, len(content))
    await statter.clear(digest, scope)
    await statter.set_descriptor(digest, desc, scope)  # the late commit: OK, but dropped
    assert statter.metrics.set_dropped == 1
    assert await unknown(statter, digest, scope)
    layout.push(REPO, content)  # pushed again for real
    await statter.set_descriptor(digest, desc, scope)  # checked: present, written
    hits = statter.metrics.hits
    assert await statter.stat(digest, scope) == desc
    assert statter.metrics.hits == hits + 1


async def test_a_setdescriptor_racing_a_clear_is_checked_against_the_backend(
    two_processes: tuple[CachedBlobStatter, GatedBackend, CachedBlobStatter], layout: Layout
) -> None:
    """The SetDescriptor starts on A while B's Clear is deleting, and writes after it returned."""
    first, gated, second = two_processes
    content = b"set during the delete"
    digest = layout.push(REPO, content)
    desc = Descriptor(OCT, digest, len(content))
    await second.stat(digest, REPO)
    clear = asyncio.ensure_future(first.clear(digest, REPO))
    gated.deletes.hold()
    await gated.deletes.reached()
    gated.reads.hold()  # the SetDescriptor's backend check, held until the Clear returned
    setting = asyncio.ensure_future(first.set_descriptor(digest, desc, REPO))
    await gated.reads.reached()
    gated.deletes.open()
    await asyncio.wait_for(clear, 10)
    gated.reads.open()
    await asyncio.wait_for(setting, 10)
    assert await unknown(second, digest, REPO)
    assert await unknown(first, digest, REPO)
