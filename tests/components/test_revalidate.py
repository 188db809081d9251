"""Bounded staleness: with ``storage.cache.revalidate``, an entry removed behind the cache's
back stops being answered within the interval plus one backend round trip.

Real parts: the in-memory and Redis caches over distribution's on-disk layout, the real
server process, and Debian's registry 2.8 sharing the Redis and the storage.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from descriptor_client import BlobUnknownError, Descriptor, DescriptorClient
from descriptor_server.backends.filesystem import FilesystemBackend
from descriptor_server.caches.inmemory import InMemoryCache
from descriptor_server.core.revalidate import Revalidator
from descriptor_server.core.statter import CachedBlobStatter
from helpers.backend_support import RegistryProcess, push_blob, registry_available
from helpers.redis_servers import RedisProcess, flush
from helpers.support import OCT, REPO, Layout, base_config, running_server, wait_for

INTERVAL = 0.2


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
    for _ in range(50):
        if not statter._background and not statter._inflight:
            return
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("scope", ["", REPO])
async def test_an_entry_gone_behind_the_cache_is_removed_after_the_interval(layout: Layout, scope: str) -> None:
    cache = InMemoryCache(100)
    statter = CachedBlobStatter(cache, FilesystemBackend(str(layout.root)), revalidator=Revalidator(INTERVAL, rate=100))
    digest = layout.push(REPO, b"collected behind the cache")
    assert await statter.stat(digest, scope) == Descriptor(OCT, digest, 26)  # a miss, written back
    layout.blob_data(digest).unlink()  # garbage collection on shared storage
    layout.link(REPO, digest).unlink()
    assert await statter.stat(digest, scope) == Descriptor(OCT, digest, 26)  # within the interval: cached
    await settle(statter)
    assert statter.metrics.revalidations == 0
    await asyncio.sleep(INTERVAL)
    assert (await statter.stat(digest, scope)).digest == digest  # stale-while-revalidate: answered...
    await settle(statter)  # ...and checked against the backend
    assert statter.metrics.revalidations == 1
    assert statter.metrics.revalidation_removed == 1
    with pytest.raises(BlobUnknownError):
        await cache.stat(digest, scope)
    with pytest.raises(BlobUnknownError):
        await statter.stat(digest, scope)
    await statter.close()


async def test_revalidation_keeps_a_blob_still_stored_and_is_coalesced(layout: Layout) -> None:
    cache = InMemoryCache(100)
    statter = CachedBlobStatter(cache, FilesystemBackend(str(layout.root)), revalidator=Revalidator(INTERVAL, 100))
    digest = layout.put_blob(b"still here")
    await statter.stat(digest)
    await asyncio.sleep(INTERVAL)
    await asyncio.gather(*(statter.stat(digest) for _ in range(20)))
    await settle(statter)
    assert statter.metrics.revalidations == 1  # twenty hits, one backend check
    assert statter.metrics.revalidation_removed == 0
    assert await cache.stat(digest) == Descriptor(OCT, digest, 10)
    await statter.stat(digest)
    await settle(statter)
    assert statter.metrics.revalidations == 1  # confirmed: not due again within the interval
    await statter.close()


async def test_revalidations_are_rate_limited(layout: Layout) -> None:
    cache = InMemoryCache(1000)
    statter = CachedBlobStatter(cache, FilesystemBackend(str(layout.root)), revalidator=Revalidator(INTERVAL, 5))
    digests = [layout.put_blob(f"blob {i}".encode()) for i in range(20)]
    await statter.batch_stat(digests)
    await asyncio.sleep(INTERVAL)
    await statter.batch_stat(digests)  # 20 entries due at once
    await settle(statter)
    m = statter.metrics
    assert m.revalidations <= 6
    assert m.revalidation_skipped >= 14
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
