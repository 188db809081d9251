"""The Redis near cache's figures for ``benchmarks/run.py`` (``--only near`` runs just these).

- **Goals on rates measured by run.py in the same run**: a Redis-backed Stat hit
  against an in-memory one, and a Redis-backed BatchStat of 1,000 hot digests against
  the in-memory BatchStat and against redis-py pipelining ``HMGET`` itself.
- **Coherence under load**: while h2load drives Stat hits at half the Redis-backed
  rate, 1,000 changes are made directly in Redis (redis-py ``HSET blobs::<d> size``,
  as another registry would), each on a digest the service holds; after each write
  this process polls the service with Stat until it answers the new size, and the
  delay from the write returning to that answer is recorded (p50, p99, max). An
  answer that is neither the old nor the new size fails the run.
- **CLIENT KILL**: the invalidation connection (``CLIENT LIST`` name
  ``descriptor-service-nearcache``) is killed, and 100 more changes are measured the
  same way right after it: a change that is never reflected (5 s) is a stale answer.
- **Sentinel failover**: a master, a replica and a Sentinel (``tests/helpers``); a
  held descriptor, the master killed, the replica promoted, the descriptor rewritten
  on the new master; every answer until the new size shows is counted, and any with
  the old size is a stale answer.
- **The lease's cost on the hit path, before/after in one run** (in this process, no
  gRPC): a near-cache hit through ``RedisCache.stat`` as shipped (one
  ``time.monotonic()`` lease check) against the same near cache with the check taken
  out (the lookup as it was before leases), and an ``InMemoryCache.stat`` hit; and
  the cost a Clear pays for its barrier (``RedisCache.settle`` with one live near
  cache, its own: one script round trip, the barrier's invalidation, the ack, the
  BLPOP wake-up).
"""

from __future__ import annotations
import __future__

import asyncio
import inspect
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import OCT, Server, say, service_config, service_server

NAME = "descriptor-service-nearcache"
#: A change not reflected within this long counts as a stale answer.
GIVE_UP = 5.0


@contextmanager
def background_load(cmd: list[str]) -> Iterator[None]:
    """h2load (its command line built by run.py) running until the block ends."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)  # let it connect and ramp up
        yield
    finally:
        proc.terminate()
        proc.wait(10)


def _raw(addr: str) -> Any:
    import redis

    host, port = addr.rsplit(":", 1)
    return redis.Redis(host=host, port=int(port), decode_responses=True)


def _tracking_ids(raw: Any) -> list[int]:
    return [int(c["id"]) for c in raw.client_list() if c.get("name") == NAME]


async def _wait_tracking(raw: Any, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        ids = _tracking_ids(raw)
        if len(ids) == 1:
            return ids[0]
        if time.monotonic() > deadline:
            raise RuntimeError(f"near cache tracking connection not found ({len(ids)} named {NAME})")
        await asyncio.sleep(0.02)


async def _reflect(client: Any, raw: Any, digest: str, old: int, new: int) -> tuple[float, int]:
    """Write ``new`` directly in Redis; seconds until the service answers it, and old answers seen."""
    from descriptor_client.descriptor import Descriptor

    raw.hset(f"blobs::{digest}", "size", str(new))
    start = time.perf_counter()
    olds = 0
    while True:
        got = await client.stat(digest)
        elapsed = time.perf_counter() - start
        if got == Descriptor(OCT, digest, new):
            return elapsed, olds
        if got != Descriptor(OCT, digest, old):
            raise RuntimeError(f"coherence: {digest} answered {got}, neither size {old} nor {new}")
        olds += 1
        if elapsed > GIVE_UP:
            return float("inf"), olds


def _summary(delays: Sequence[float]) -> dict[str, float]:
    finite = sorted(d for d in delays if d != float("inf"))
    out = {"changes": float(len(delays)), "never_reflected": float(len(delays) - len(finite))}
    if finite:
        out["p50_ms"] = statistics.median(finite) * 1000
        out["p99_ms"] = finite[min(len(finite) - 1, int(0.99 * len(finite)))] * 1000
        out["max_ms"] = finite[-1] * 1000
    return out


async def _coherence(target: str, redis_addr: str, changes: int, after_kill: int) -> dict[str, Any]:
    from descriptor_client import AsyncDescriptorClient
    from descriptor_client.descriptor import Descriptor

    raw = _raw(redis_addr)
    digests = [f"sha256:{i + 1:064x}" for i in range(100)]
    sizes = dict.fromkeys(digests, 1)
    async with AsyncDescriptorClient(target) as client:
        for d in digests:
            await client.set_descriptor(d, Descriptor(OCT, d, 1))
        await client.stat(digests[0])  # starts tracking, if nothing did yet
        await _wait_tracking(raw)
        for d in digests:  # held before they change
            for _ in range(3):
                await client.stat(d)

        async def change(i: int) -> tuple[float, int]:
            d = digests[i % len(digests)]
            old, sizes[d] = sizes[d], sizes[d] + 1
            return await _reflect(client, raw, d, old, sizes[d])

        delays, olds = [], 0
        for i in range(changes):
            delay, n = await change(i)
            delays.append(delay)
            olds += n
        out: dict[str, Any] = {"load": _summary(delays), "old_answers_before_reflected": olds}
        killed = _tracking_ids(raw)
        for cid in killed:
            raw.client_kill_filter(_id=cid)
        delays = []
        for i in range(after_kill):
            delay, _ = await change(changes + i)
            delays.append(delay)
        out["after_kill"] = _summary(delays)
        new_id = await _wait_tracking(raw)
        out["tracking_set_up_again"] = new_id not in killed
    raw.close()
    return out


def coherence(target: str, redis_addr: str, load_cmd: list[str], *, quick: bool) -> dict[str, Any]:
    changes = 200 if quick else 1000
    say(f"near cache coherence: {changes} direct Redis changes under load, then CLIENT KILL")
    with background_load(load_cmd):
        res = asyncio.run(_coherence(target, redis_addr, changes, 100))
    say(f"coherence: {res}")
    return res


async def _failover(target: str, setup: Any) -> dict[str, Any]:
    from descriptor_client import AsyncDescriptorClient
    from descriptor_client.descriptor import Descriptor
    from descriptor_client.errors import DescriptorError

    digest = "sha256:" + "f" * 64
    async with AsyncDescriptorClient(target) as client:
        await client.set_descriptor(digest, Descriptor(OCT, digest, 1))
        for _ in range(3):
            await client.stat(digest)
        with setup.master.client() as master:
            master.execute_command("WAIT", 1, 5000)
            await _wait_tracking(master)
            for _ in range(3):
                assert await client.stat(digest) == Descriptor(OCT, digest, 1)
        setup.master.stop()
        killed = time.perf_counter()
        with setup.replica.client() as promoted:
            deadline = time.monotonic() + 60
            while promoted.info("replication")["role"] != "master":
                if time.monotonic() > deadline:
                    raise RuntimeError("sentinel did not promote the replica")
                await asyncio.sleep(0.02)
            promoted.hset(f"blobs::{digest}", "size", "2")
            written = time.perf_counter()
            answers = {"old": 0, "new": 0, "error": 0}
            reflected = float("inf")
            while time.perf_counter() - written < GIVE_UP:
                try:
                    got = await client.stat(digest)
                except DescriptorError:
                    answers["error"] += 1  # the cache failed and the backend does not know it
                    await asyncio.sleep(0.005)
                    continue
                if got.size == 1:
                    answers["old"] += 1
                else:
                    answers["new"] += 1
                    if reflected == float("inf"):
                        reflected = time.perf_counter() - written
                    if answers["new"] >= 50:
                        break
                await asyncio.sleep(0.005)
            await _wait_tracking(promoted, timeout=30)
            promoted.hset(f"blobs::{digest}", "size", "3")
            start = time.perf_counter()
            while (await client.stat(digest)).size != 3:
                if time.perf_counter() - start > GIVE_UP:
                    raise RuntimeError("failover: a change on the new master was never reflected")
            after = time.perf_counter() - start
    return {
        "promoted_after_s": written - killed,
        "reflected_ms": reflected * 1000,
        "stale_answers": answers["old"],
        "answers": answers,
        "tracking_on_new_master_reflected_ms": after * 1000,
    }


def failover(binary: str | None) -> dict[str, Any] | None:
    """A Sentinel failover under the service, every answer counted (None without a Redis binary)."""
    if binary is None:
        return None
    from helpers.redis_servers import start_sentinel

    say("near cache: Sentinel failover")
    with tempfile.TemporaryDirectory(prefix="descriptor-bench-sentinel-") as tmp:
        work = Path(tmp)
        setup = start_sentinel(binary, work / "redis", replica=True, down_after_ms=300)
        try:
            root = work / "registry"
            root.mkdir()
            config = redis_service_config(root, {"addrs": [setup.sentinel.addr], "mastername": setup.mastername})
            svc: Server = service_server("sentinel", work, config).start()
            try:
                res = asyncio.run(_failover(svc.target, setup))
            finally:
                svc.stop()
        finally:
            setup.stop()
    say(f"failover: {res}")
    return res


#: The lease check that opens ``NearCache.get`` (what the "before" figure leaves out).
LEASE_CHECK = """
if time.monotonic() >= self._lease_until:
    self._lapse()
    return None
"""


def unleased(method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` (``NearCache.get``) as shipped with its lease check taken out: the lookup
    as it was before leases, from the real code, so the two figures differ by the check
    alone and cannot drift apart (a check no longer found there fails the run)."""
    source = textwrap.dedent(inspect.getsource(method))
    check = textwrap.indent(LEASE_CHECK.lstrip("\n"), "    ")
    if source.count(check) != 1:
        raise RuntimeError(f"{method.__qualname__} no longer opens with the lease check:\n{source}")
    module = inspect.getmodule(method)
    assert module is not None
    code = compile(
        source.replace(check, "", 1),
        inspect.getfile(method),
        "exec",
        flags=__future__.annotations.compiler_flag,
        dont_inherit=True,
    )
    namespace: dict[str, Any] = {}
    exec(code, vars(module), namespace)  # the module's globals: the lookup's names resolve as shipped
    return cast("Callable[..., Any]", namespace[method.__name__])


async def _lease_cost(redis_addr: str, n: int, rounds: int) -> dict[str, float]:
    from descriptor_client.descriptor import Descriptor
    from descriptor_server.caches.inmemory import InMemoryCache
    from descriptor_server.caches.redis import from_config
    from descriptor_server.caches.redis.near import NearCache
    from descriptor_server.config import RedisConfig

    class Unleased(NearCache):
        """The lookup as it was before leases: the "before" figure."""

        get = unleased(NearCache.get)

    digest = "sha256:" + "e" * 64
    desc = Descriptor(OCT, digest, 1)
    cache = from_config(RedisConfig(addrs=[redis_addr]))
    near = cache.near
    assert near is not None
    memory = InMemoryCache(10000)
    await memory.set_descriptor(digest, desc)
    try:
        await cache.set_descriptor(digest, desc)
        deadline = time.monotonic() + 10
        while True:  # until the near cache answers (tracking set up, lease held, entry held)
            before = near.hits
            await cache.stat(digest)
            if near.hits > before:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the near cache never answered")
            await asyncio.sleep(0.01)

        async def per_hit(stat: Any) -> float:
            best = float("inf")
            for _ in range(rounds):
                start = time.perf_counter()
                for _ in range(n):
                    await stat(digest)
                best = min(best, (time.perf_counter() - start) / n)
            return best * 1e9

        shipped_class = type(near)
        after = await per_hit(cache.stat)
        near.__class__ = Unleased
        try:
            before = await per_hit(cache.stat)
        finally:
            near.__class__ = shipped_class
        after = min(after, await per_hit(cache.stat))  # interleaved: drift hits both
        inmemory = await per_hit(memory.stat)
        settles = []
        for _ in range(200):
            start = time.perf_counter()
            await cache.settle(digest)
            settles.append((time.perf_counter() - start) * 1000)
        settles.sort()
        return {
            "hit_ns_before": before,
            "hit_ns_after": after,
            "inmemory_hit_ns": inmemory,
            "settle_p50_ms": settles[len(settles) // 2],
            "settle_p99_ms": settles[int(len(settles) * 0.99)],
        }
    finally:
        await cache.close()


def lease_cost(redis_addr: str, *, quick: bool) -> dict[str, float]:
    """The lease check's cost per near-cache hit, before/after in one run, and the barrier's per Clear."""
    res = asyncio.run(_lease_cost(redis_addr, 20_000 if quick else 100_000, 3 if quick else 5))
    say(
        f"lease: near hit {res['hit_ns_before']:.0f} ns before, {res['hit_ns_after']:.0f} ns after "
        f"(in-memory {res['inmemory_hit_ns']:.0f} ns); settle p50 {res['settle_p50_ms']:.2f} ms"
    )
    return res


def redis_service_config(root: Path, redis: dict[str, Any]) -> dict[str, Any]:
    return service_config(root, "redis", redis={"readtimeout": "300ms", **redis})


def rows(res: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """The near cache's rows of the results table."""

    def goal(ok: bool) -> str:
        return "met" if ok else "NOT met"

    out: list[tuple[str, str, str, str]] = []
    unary, batch, peer = res.get("unary", {}), res.get("batch", {}), res.get("redis_peer")
    if "redis" in unary and "inmemory" in unary:
        ratio = unary["redis"] / unary["inmemory"]
        out.append(("Stat hit, redis (near cache) vs in-memory", "", f"{ratio:.2f}x", f"≥ 0.9x {goal(ratio >= 0.9)}"))
    if "redis" in batch and "inmemory" in batch:
        ratio = batch["redis"] / batch["inmemory"]
        out.append(("BatchStat 1000 hot, redis vs in-memory", "", f"{ratio:.2f}x", f"≥ 0.8x {goal(ratio >= 0.8)}"))
    if "redis" in batch and peer:
        ratio = batch["redis"] / peer
        out.append(("BatchStat 1000 hot, redis vs redis-py HMGET", "", f"{ratio:.2f}x", f"≥ 3x {goal(ratio >= 3)}"))
    near = res.get("near", {})
    coh = near.get("coherence")
    if coh:
        load = coh["load"]
        ok = load.get("p99_ms", float("inf")) <= 50 and not load["never_reflected"]
        out.append(
            (
                f"Direct Redis change reflected, under load ({load['changes']:.0f} changes)",
                f"p99 {load.get('p99_ms', float('nan')):.1f} ms (p50 {load.get('p50_ms', float('nan')):.1f}, "
                f"max {load.get('max_ms', float('nan')):.1f})",
                f"{load['never_reflected']:.0f} never",
                f"p99 ≤ 50 ms {goal(ok)}",
            )
        )
        kill = coh["after_kill"]
        ok = not kill["never_reflected"] and coh["tracking_set_up_again"]
        out.append(
            (
                f"  after CLIENT KILL of the invalidation connection ({kill['changes']:.0f} changes)",
                f"max {kill.get('max_ms', float('nan')):.1f} ms",
                f"{kill['never_reflected']:.0f} stale",
                f"0 stale {goal(ok)}",
            )
        )
    lease = near.get("lease")
    if lease:
        extra = lease["hit_ns_after"] - lease["hit_ns_before"]
        out.append(
            (
                "  lease check per near hit (in process, before → after)",
                f"{lease['hit_ns_before']:.0f} → {lease['hit_ns_after']:.0f} ns "
                f"(in-memory hit {lease['inmemory_hit_ns']:.0f} ns)",
                f"{extra:+.0f} ns",
                "",
            )
        )
        out.append(
            (
                "  barrier per Clear (settle, one live near cache)",
                f"p50 {lease['settle_p50_ms']:.2f} ms, p99 {lease['settle_p99_ms']:.2f} ms",
                "",
                "",
            )
        )
    fo = near.get("failover")
    if fo:
        out.append(
            (
                "  after a Sentinel failover (change on the new master)",
                f"reflected in {fo['reflected_ms']:.1f} ms",
                f"{fo['stale_answers']} stale of {sum(fo['answers'].values())}",
                f"0 stale {goal(fo['stale_answers'] == 0 and fo['reflected_ms'] != float('inf'))}",
            )
        )
    return out
