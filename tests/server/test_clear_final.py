"""Clear is final: once it has returned OK, no Stat that starts afterwards answers the blob.

Neither by a write-back of a backend read that raced the Clear, nor by joining a
coalesced read that began before it; and a Clear refused at delete time (UNSUPPORTED,
UNAVAILABLE) leaves the cache as it was. Each case runs against the real caches
(in-memory, Redis on a single server and on a Cluster) and a chained service (a
real second server as the backend), with the backend held at gates.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
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
from helpers.gates import GatedBackend
from helpers.redis_servers import RedisProcess, flush
from helpers.support import OCT, REPO, Layout, ServerProcess, base_config
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


@pytest.mark.parametrize("failure", [UnsupportedError("the registry answered 405"), OSError("registry unreachable")])
async def test_a_clear_refused_at_delete_time_leaves_the_cache_as_it_was(
    setup: Setup, layout: Layout, failure: Exception
) -> None:
    statter, gated, cache = setup
    digest = layout.push(REPO, b"kept by a refused clear")
    await statter.set_descriptor(digest, Descriptor(OCT, digest, 23))
    await statter.set_descriptor(digest, Descriptor("application/vnd.oci.image.layer.v1.tar", digest, 23), REPO)
    gated.fail_delete = failure
    with pytest.raises(UnsupportedError if isinstance(failure, UnsupportedError) else BackendUnavailableError):
        await statter.clear(digest, REPO)
    hits = statter.metrics.hits
    assert (await statter.stat(digest, REPO)).media_type == "application/vnd.oci.image.layer.v1.tar"
    assert (await statter.stat(digest)).media_type == OCT
    assert statter.metrics.hits == hits + 2  # answered by the cache: nothing was taken from it
    assert (await cache.stat(digest, REPO)).size == 23


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
