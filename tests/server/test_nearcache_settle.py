"""Clear is final across near caches: leases and barriers (``caches/redis/nearlease.py``), on real servers.

Two replicas sharing one Redis, no fault: a Stat on one replica right after a Clear on
the other returned never answers the cleared blob from its near cache. A replica that
was stopped (SIGSTOP) while a Clear ran, once resumed, answers nothing cleared
meanwhile. A near cache whose Redis hangs stops answering when its lease runs out,
whatever its invalidation connection says. The barrier waits for a slow member (until
it acks, or, if it keeps renewing without acking, until it is evicted and its lease
has run out) and not for a dead one for longer than its lease.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from descriptor_client import AsyncDescriptorClient, BlobUnknownError, Descriptor
from descriptor_server.caches.redis import RedisCache, RedisCacheError, from_config, nearlease
from descriptor_server.caches.redis.near import NearCache
from descriptor_server.config import RedisConfig, RedisNearCacheConfig
from descriptor_server.observability.nearcache import NearCacheCollector
from helpers.nearcache import answer, held, live, until_near
from helpers.redis_servers import RedisProcess, SentinelSetUp, flush
from helpers.support import OCT, REPO, Layout, ServerProcess, free_port, until
from helpers.targets_redis import redis_config, server_redis_config

pytestmark = pytest.mark.redis

B256 = "sha256:" + "b" * 64


async def near_cache(addr: str, lease: float = 3.0, **kwargs: Any) -> RedisCache:
    cache = from_config(redis_config([addr], nearcache=RedisNearCacheConfig(lease=lease), **kwargs))
    await live(cache, leased=True)
    return cache


def members(redis: RedisProcess) -> dict[str, float]:
    with redis.client() as raw:
        return {str(m): float(s) for m, s in raw.zrange(nearlease.MEMBERS_KEY, 0, -1, withscores=True)}


def replica_config(root: Path, redis: RedisProcess, lease: str = "3s", addr: str = "") -> dict[str, Any]:
    config = server_redis_config(root, [addr or redis.addr], nearcache={"size": 10000, "lease": lease})
    return config


async def wait_members(redis: RedisProcess, count: int) -> None:
    async def now() -> int:
        return len(members(redis))

    await until(now, lambda n: n >= count)


# -- two replicas, no fault ---------------------------------------------------------------


class SlowLink:
    """A TCP relay that delivers each chunk ``delay`` seconds after it was sent, in order
    (a replica farther from Redis than the others): the one fault loopback cannot make."""

    def __init__(self, upstream: RedisProcess, delay: float) -> None:
        self.upstream = upstream
        self.delay = delay
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        #: Cleared while the link is cut (a partition): nothing is delivered, in either direction.
        self.open = asyncio.Event()
        self.open.set()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"127.0.0.1:{port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream.port)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(src, dst))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            loop = asyncio.get_running_loop()
            while True:
                due, chunk = await queue.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                await self.open.wait()
                if not chunk:
                    dst.close()
                    return
                dst.write(chunk)
                await dst.drain()

        delivery = asyncio.create_task(deliver())
        try:
            while True:
                chunk = await src.read(65536)
                queue.put_nowait((asyncio.get_running_loop().time() + self.delay, chunk))
                if not chunk:
                    break
            await delivery
        except (ConnectionError, asyncio.CancelledError):
            delivery.cancel()
            dst.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def test_clear_on_one_replica_is_final_on_the_other(redis_own: RedisProcess, tmp_path: Path) -> None:
    """B clears, then A Stats at once, many rounds: never the cleared blob (today's main
    answered it from A's near cache while the invalidation was on its way: here A is
    20 ms farther from Redis than B)."""
    root = tmp_path / "registry"
    root.mkdir()
    layout = Layout(root)
    link = SlowLink(redis_own, 0.02)
    far = await link.start()
    a = ServerProcess(replica_config(root, redis_own, addr=far), tmp_path).start()
    b = ServerProcess(replica_config(root, redis_own), tmp_path).start()
    stale: list[tuple[int, str, str]] = []
    try:
        async with AsyncDescriptorClient(a.target) as ca, AsyncDescriptorClient(b.target) as cb:
            rounds = 60
            for i in range(rounds):
                repository = REPO if i % 2 else ""
                content = f"blob {i} {time.time_ns()}".encode()
                digest = layout.push(REPO, content) if repository else layout.put_blob(content)
                want = Descriptor(OCT, digest, len(content))
                for _ in range(3):  # a miss that fills Redis, then reads that fill A's near cache
                    assert await ca.stat(digest, repository) == want
                await cb.clear(digest, repository)
                try:
                    got = await ca.stat(digest, repository)
                except BlobUnknownError:
                    continue
                stale.append((i, repository, str(got)))
        assert stale == [], f"{len(stale)} of {rounds} Stats answered a blob cleared on the other replica"
    finally:
        a.stop()
        b.stop()
        await link.close()


async def test_revalidate_on_one_replica_is_final_on_the_other(redis_own: RedisProcess, tmp_path: Path) -> None:
    """A blob deleted behind the service's back (garbage collection), found gone by a
    Revalidate on B: A, 20 ms farther from Redis, no longer answers it either."""
    root = tmp_path / "registry"
    root.mkdir()
    layout = Layout(root)
    link = SlowLink(redis_own, 0.02)
    a = ServerProcess(replica_config(root, redis_own, addr=await link.start()), tmp_path).start()
    b = ServerProcess(replica_config(root, redis_own), tmp_path).start()
    stale = 0
    try:
        async with AsyncDescriptorClient(a.target) as ca, AsyncDescriptorClient(b.target) as cb:
            rounds = 20
            for i in range(rounds):
                content = f"collected {i} {time.time_ns()}".encode()
                digest = layout.put_blob(content)
                for _ in range(3):
                    assert await ca.stat(digest) == Descriptor(OCT, digest, len(content))
                layout.blob_data(digest).unlink()  # collected behind the service's back
                with pytest.raises(BlobUnknownError):
                    await cb.revalidate(digest)
                try:
                    await ca.stat(digest)
                    stale += 1
                except BlobUnknownError:
                    pass
        assert stale == 0, f"{stale} of {rounds} Stats answered a blob a Revalidate on the other replica found gone"
    finally:
        a.stop()
        b.stop()
        await link.close()


@pytest.mark.parametrize("stopped", [True, False], ids=["sigstop", "partition"])
async def test_replica_cut_off_answers_nothing_cleared_meanwhile(
    redis_own: RedisProcess, tmp_path: Path, stopped: bool
) -> None:
    """A is cut off from Redis (and, sigstop, stopped too) while B clears 50 blobs; then A
    is asked at once, its invalidations still held on the way: no cleared blob. The
    first Clear waits A's lease out (1 s), the others do not wait for A at all."""
    root = tmp_path / "registry"
    root.mkdir()
    layout = Layout(root)
    link = SlowLink(redis_own, 0.0)
    configs = [
        replica_config(root, redis_own, lease="1s", addr=await link.start()),
        replica_config(root, redis_own, lease="1s"),
    ]
    ports = [free_port(), free_port()]
    for config, port in zip(configs, ports, strict=True):
        config["http"] = {"debug": {"addr": f"127.0.0.1:{port}", "prometheus": {"enabled": True}}}
    a = ServerProcess(configs[0], tmp_path).start()
    b = ServerProcess(configs[1], tmp_path).start()
    assert a.proc is not None
    try:
        async with AsyncDescriptorClient(a.target) as ca, AsyncDescriptorClient(b.target) as cb:
            digests = [layout.put_blob(f"cut off {i}".encode()) for i in range(50)]
            for _ in range(3):
                for client in (ca, cb):  # B's near cache starts too
                    assert all(isinstance(d, Descriptor) for d in await client.batch_stat(digests))
            await wait_members(redis_own, 2)
            if stopped:
                os.kill(a.proc.pid, signal.SIGSTOP)
            link.open.clear()
            try:
                start = time.monotonic()
                for digest in digests:
                    await cb.clear(digest)
                took = time.monotonic() - start
                assert took < 8.0, took  # bounded: one lease, plus a loaded machine's slack
            finally:
                if stopped:
                    os.kill(a.proc.pid, signal.SIGCONT)
            answers = await ca.batch_stat(digests)
            link.open.set()
            stale = [d for d in answers if not isinstance(d, BlobUnknownError)]
            assert stale == [], f"{len(stale)} of {len(digests)} cleared blobs answered"
        # What operators see: B waited A out once (counted, logged once), A's lease ran out.
        async with httpx.AsyncClient(timeout=10) as http:
            scrapes = [(await http.get(f"http://127.0.0.1:{port}/metrics")).text for port in ports]

        def value(scrape: str, name: str) -> float:
            lines = [line for line in scrape.splitlines() if line.startswith(name + " ")]
            assert lines, (name, scrape)
            return float(lines[0].split()[1])

        assert value(scrapes[1], "descriptor_cache_near_barrier_waited_out_total") == 1
        assert value(scrapes[1], "descriptor_cache_near_barriers_total") >= 1
        assert value(scrapes[0], "descriptor_cache_near_lease_lapses_total") >= 1
        assert b.output.count("until its lease ran out") == 1, b.output
    finally:
        link.open.set()
        a.stop()
        b.stop()
        await link.close()


# -- the lease -----------------------------------------------------------------------------


async def test_near_cache_whose_redis_hangs_stops_answering_when_its_lease_runs_out(
    redis_own: RedisProcess,
) -> None:
    """Pings so far apart that the invalidation connection cannot notice: the lease alone
    stops the answers (before Redis would count this process gone)."""
    cache = await near_cache(redis_own.addr, lease=0.6, readtimeout=0.2)
    cache.retry_after = 0
    near = cache.near
    assert near is not None
    near.ping_interval = 60.0
    try:
        await cache.set_descriptor(B256, Descriptor(OCT, B256, 1))
        assert await held(cache, B256) == Descriptor(OCT, B256, 1)
        redis_own.pause()
        try:
            start = time.monotonic()

            async def from_near() -> bool:
                try:
                    return await cache.stat(B256) is not None and near.leased
                except RedisCacheError:
                    return False

            await until(from_near, lambda ok: not ok, timeout=5)
            assert time.monotonic() - start < 0.6 + 1.0  # (loaded machines: slack)
            assert near.live  # the invalidation connection did not notice: the lease did
            assert len(near) == 0
            assert near.lapses >= 1
            for _ in range(5):
                with pytest.raises(RedisCacheError):  # asked Redis, which hangs
                    await cache.stat(B256)
        finally:
            redis_own.resume()

        await until_near(cache, lambda n: n.leased)
        assert await held(cache, B256) == Descriptor(OCT, B256, 1)
    finally:
        await cache.close()


async def test_members_register_and_leave(redis_own: RedisProcess) -> None:
    cache = await near_cache(redis_own.addr, lease=0.9)
    near = cache.near
    assert near is not None
    try:
        registered = members(redis_own)
        assert list(registered) == [near.member]
        with redis_own.client() as raw:
            now = raw.time()
        now_ms = now[0] * 1000 + now[1] // 1000
        assert now_ms < registered[near.member] <= now_ms + 900 + 50
        first = registered[near.member]

        async def renewed() -> float:
            return members(redis_own).get(near.member, 0.0)

        await until(renewed, lambda s: s > first)
    finally:
        await cache.close()
    assert members(redis_own) == {}


# -- the barrier ------------------------------------------------------------------------------


class HeldBack:
    """A near cache's invalidations held back from :meth:`hold` until :meth:`release` (a
    member that lags: alive, but Redis's invalidations reach it late)."""

    def __init__(self, near: NearCache) -> None:
        self.near = near
        self.real = near.invalidate
        self.gate = asyncio.Event()

    async def _invalidate(self, keys: Any) -> None:
        await self.gate.wait()
        await self.real(keys)

    def hold(self) -> None:
        self.near.invalidate = self._invalidate  # type: ignore[method-assign]

    def release(self) -> None:
        self.gate.set()

    def restore(self) -> None:
        self.gate.set()
        self.near.invalidate = self.real  # type: ignore[method-assign]


async def test_barrier_waits_for_a_slow_member_until_it_acks(redis_own: RedisProcess) -> None:
    slow = await near_cache(redis_own.addr, lease=3.0)
    clearer = from_config(redis_config([redis_own.addr], nearcache=RedisNearCacheConfig(size=0)))
    near = slow.near
    assert near is not None
    lag = HeldBack(near)
    try:
        await clearer.set_descriptor(B256, Descriptor(OCT, B256, 1))
        assert await held(slow, B256) == Descriptor(OCT, B256, 1)
        lag.hold()
        await clearer.clear(B256)
        settle = asyncio.create_task(clearer.settle(B256))
        await asyncio.sleep(0.3)
        assert not settle.done()  # the slow member has not applied the Clear yet
        assert await answer(slow, B256) == Descriptor(OCT, B256, 1)  # (and still answers it)
        released = time.monotonic()
        lag.release()
        await asyncio.wait_for(settle, 2.0)
        assert time.monotonic() - released < 1.0
        assert await answer(slow, B256) is None
        assert clearer.settler is not None
        assert clearer.settler.acks == 1
        assert clearer.settler.waited_out == 0
    finally:
        lag.restore()
        await clearer.close()
        await slow.close()


async def test_barrier_evicts_a_member_that_renews_without_acking(redis_own: RedisProcess) -> None:
    """Alive and renewing, but its invalidations do not arrive: the settle takes its lease
    away and returns when that lease has run out, by which time it no longer answers."""
    lagging = await near_cache(redis_own.addr, lease=1.5)  # renewals not missed on a loaded machine
    clearer = from_config(redis_config([redis_own.addr], nearcache=RedisNearCacheConfig(size=0)))
    near = lagging.near
    assert near is not None
    lag = HeldBack(near)
    try:
        await clearer.set_descriptor(B256, Descriptor(OCT, B256, 1))
        assert await held(lagging, B256) == Descriptor(OCT, B256, 1)
        lag.hold()
        await clearer.clear(B256)
        start = time.monotonic()
        await asyncio.wait_for(clearer.settle(B256), 5.0)
        assert time.monotonic() - start <= 2 * 1.5 + 1.0  # two leases at most
        assert await answer(lagging, B256) is None  # its invalidation is still held back
        assert clearer.settler is not None
        assert clearer.settler.evictions == 1, clearer.settler.stats()

        await until_near(lagging, lambda n: n.evicted == 1)  # its next renewal was refused
    finally:
        lag.restore()
        await clearer.close()
        await lagging.close()


async def test_barrier_waits_for_a_dead_member_no_longer_than_its_lease(redis_own: RedisProcess) -> None:
    cache = await near_cache(redis_own.addr, lease=3.0)
    try:
        with redis_own.client() as raw:
            sec, usec = raw.time()
            now_ms = sec * 1000 + usec // 1000
            raw.zadd(nearlease.MEMBERS_KEY, {"killed-right-after-renewing": now_ms + 800, "gone-long-ago": now_ms - 10})
        start = time.monotonic()
        await asyncio.wait_for(cache.settle(B256), 5.0)
        took = time.monotonic() - start
        assert 0.7 < took < 0.8 + 1.0, took  # the live one is waited out, the expired one not at all
        assert cache.settler is not None
        assert cache.settler.waited_out == 1
        assert cache.settler.acks == 1  # this process's own near cache
        start = time.monotonic()
        await cache.settle(B256)
        assert time.monotonic() - start < 0.5  # its lease is over: not waited for again
        assert cache.near is not None
        families = {m.name: m.samples[0].value for m in NearCacheCollector(cache.near.stats).collect()}
        assert families["descriptor_cache_near_barrier_waited_out"] == 1
        assert families["descriptor_cache_near_barriers"] == 2
    finally:
        await cache.close()


async def test_settle_without_any_near_cache_is_one_round_trip(redis_own: RedisProcess) -> None:
    cache = from_config(redis_config([redis_own.addr], nearcache=RedisNearCacheConfig(size=0)))
    try:
        start = time.monotonic()
        for _ in range(20):
            await cache.settle(B256)
        assert time.monotonic() - start < 1.0
        assert cache.settler is not None
        assert cache.settler.barriers == 0
        with redis_own.client() as raw:
            assert raw.keys("descriptor::nearcache::barrier::*") == []
    finally:
        await cache.close()


async def test_sentinel_barrier_is_acked(redis_sentinel: SentinelSetUp) -> None:
    """On Sentinel the near caches register and ack on the master the sentinels name."""
    flush(redis_sentinel.master)
    kwargs: dict[str, Any] = {"mastername": redis_sentinel.mastername, "readtimeout": 1.0}
    holder = await near_cache(redis_sentinel.sentinel.addr, lease=3.0, **kwargs)
    clearer = from_config(
        redis_config([redis_sentinel.sentinel.addr], nearcache=RedisNearCacheConfig(size=0), **kwargs)
    )
    try:
        assert holder.near is not None
        assert list(members(redis_sentinel.master)) == [holder.near.member]
        await clearer.set_descriptor(B256, Descriptor(OCT, B256, 1))
        assert await held(holder, B256) == Descriptor(OCT, B256, 1)
        await clearer.clear(B256)
        await asyncio.wait_for(clearer.settle(B256), 2.0)
        assert clearer.settler is not None
        assert (clearer.settler.barriers, clearer.settler.acks, clearer.settler.waited_out) == (1, 1, 0)
        assert await answer(holder, B256) is None
    finally:
        await clearer.close()
        await holder.close()


async def test_cluster_has_no_settler(redis_cluster: list[RedisProcess]) -> None:
    flush(*redis_cluster)
    cache = from_config(redis_config([n.addr for n in redis_cluster]))
    try:
        assert cache.settler is None
        await cache.settle(B256)  # nothing to wait for: no near cache on Cluster
    finally:
        await cache.close()


async def test_user_without_the_lease_keys_gets_no_near_cache_and_clears_do_not_wait(
    redis_own: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """An ACL that predates leases (no ``descriptor::nearcache::*``): the near cache cannot
    register, so it never answers from memory; barriers are refused, and nobody is waited for."""
    with redis_own.client() as admin:
        admin.execute_command(
            "ACL", "SETUSER", "registry", "on", ">s3cret", "~blobs::*", "~repository::*",
            "~descriptor::cleared::*", "resetchannels", "&__redis__:invalidate", "+@all",
        )  # fmt: skip
    caplog.set_level(logging.INFO)
    cache = from_config(RedisConfig(addrs=[redis_own.addr], username="registry", password="s3cret"))
    near = cache.near
    assert near is not None
    try:
        await cache.set_descriptor(B256, Descriptor(OCT, B256, 1))
        for _ in range(20):
            assert await cache.stat(B256) == Descriptor(OCT, B256, 1)
            await asyncio.sleep(0.02)
        assert near.hits == 0
        assert not near.live
        start = time.monotonic()
        for _ in range(3):
            await cache.settle(B256)
        assert time.monotonic() - start < 1.0
        assert cache.settler is not None
        assert cache.settler.failures == 3
        messages = [r.getMessage() for r in caplog.records]
        assert sum("refuses the Clears' barriers" in m for m in messages) == 1, messages
        assert sum("cannot set up invalidation tracking" in m for m in messages) == 1, messages
    finally:
        await cache.close()
