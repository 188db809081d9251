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

``--compare REF`` instead measures the served figures of the git ref ``REF`` and of this
tree side by side in one run (``benchmarks/compare_bench.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import batch_bench
import cache_bench
import go_bench
import memory_bench
import unary_bench
from common import (
    CLIENT_CPU,
    HERE,
    OCT,
    PIN,
    SERVER_CPU,
    H2Load,
    Server,
    digest_of,
    ensure_h2load,
    framed,
    free_port,
    machine,
    metrics,
    pb,
    prime,
    redis_binary,
    redis_server,
    say,
    service,
    service_config,
    service_server,
    stat_request,
)
from helpers.support import Layout
from report import PUBLISHED, published_page, render


@dataclass(frozen=True)
class Sizes:
    """How much each measurement does (``--quick`` makes it all smaller)."""

    quick: bool
    rounds: int
    n_unary: int
    batch_seconds: float
    mem_entries: int
    scan_capacity: int

    @classmethod
    def of(cls, quick: bool, rounds: int) -> Sizes:
        return cls(
            quick=quick,
            rounds=rounds or (1 if quick else 3),
            n_unary=4000 if quick else 30000,
            batch_seconds=2.0 if quick else 6.0,
            mem_entries=100_000 if quick else 1_000_000,
            scan_capacity=2000 if quick else 10_000,
        )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark the descriptor service (see module docstring).")
    parser.add_argument("--quick", action="store_true", help="a short smoke run (smaller counts, one round)")
    parser.add_argument("--rounds", type=int, default=0, help="h2load rounds per server (best is kept)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument(
        "--only", choices=("all", "near"), default="all", help="near: only the Redis near cache's rows (near_bench.py)"
    )
    parser.add_argument("--no-auth", action="store_true", help="skip the token-auth figures (auth_bench.py)")
    parser.add_argument(
        "--compare",
        metavar="REF",
        default="",
        help="before/after in one run: the served figures of git ref REF's sources and of this tree,"
        " interleaved, side by side (compare_bench.py; --rounds defaults to 5)",
    )
    parser.add_argument(
        "--publish",
        type=Path,
        default=None,
        help="the committed page of figures to rewrite (default: docs/benchmarks.md after a full run;"
        " quick and --only runs rewrite it only when named)",
    )
    return parser.parse_args(argv)


def redis_cache_available() -> bool:
    try:
        import descriptor_server.caches.redis  # noqa: F401
    except ImportError:
        say("redis cache not available (descriptor_server.caches.redis missing): its rows are skipped")
        return False
    return True


def start_servers(
    stack: ExitStack, work: Path, hot: str, batch: list[str], *, near_only: bool, redis_cache: bool
) -> tuple[dict[str, Server], str | None]:
    """The no-op servicer and the services (in-memory, revalidating, Redis), primed; the Redis address."""
    servers: dict[str, Server] = {}

    def start(server: Server) -> None:
        servers[server.name] = server.start()
        stack.callback(server.stop)

    start(Server("noop", [sys.executable, str(HERE / "noop_server.py")], work))
    start(service("inmemory", work, "inmemory"))
    # The hot blob is on disk, so that a revalidation (once a minute, the hit path's cost)
    # and every --workers worker's first Stat find it.
    data = Layout(work / "registry").blob_data(hot)
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_bytes(b"x" * 1000)
    if not near_only:
        start(service("revalidate", work, "inmemory", cache_settings={"revalidate": "1m"}))
    redis_addr = stack.enter_context(redis_server(work))
    if redis_addr and redis_cache:
        start(service("redis", work, "redis", redis_addr))
    for name in ("inmemory", "revalidate", "redis"):
        if name in servers:
            asyncio.run(prime(servers[name].target, [hot, *batch]))
    if redis_addr and "redis" not in servers:  # the peer still needs the layout in Redis
        import redis

        host, port = redis_addr.rsplit(":", 1)
        rc = redis.Redis(host=host, port=int(port))
        for i, d in enumerate(batch):
            rc.hset(f"blobs::{d}", mapping={"digest": d, "size": 1000 + i, "mediatype": OCT})
    return servers, redis_addr


def measure_servers(args: argparse.Namespace, sizes: Sizes, h2: str | None, work: Path) -> dict[str, Any]:
    """Everything measured against running servers (unary, latency, Go, BatchStat, near cache, auth, workers, HEADs)."""
    near_only = args.only == "near"
    results: dict[str, Any] = {}
    hot = digest_of(0, "unary")
    batch = [digest_of(i, "batch") for i in range(1000)]
    batch_request = pb.BatchStatRequest(digests=batch).SerializeToString()
    body = work / "stat.grpc"
    body.write_bytes(framed(stat_request(hot)))
    with ExitStack() as stack:
        servers, redis_addr = start_servers(
            stack, work, hot, batch, near_only=near_only, redis_cache=redis_cache_available()
        )
        if h2:
            unary = unary_bench.rates(h2, servers, body, sizes.n_unary, sizes.rounds)
            results["unary"] = {name: max(v) for name, v in unary.items()}
            results["unary_all"] = unary
        if h2 and not near_only:
            half = results["unary"]["inmemory"] / 2
            results["latency"] = unary_bench.latency(h2, servers, body, work, half=half, quick=sizes.quick)

        results["go"] = go_bench.unary(
            servers, hot, sizes.n_unary, sizes.rounds, lambda target: asyncio.run(metrics(target))
        )

        results["batch"] = {}
        for name in ("inmemory", "redis"):
            if name in servers:
                res = asyncio.run(
                    batch_bench.batch_load(servers[name].target, batch_request, 1000, sizes.batch_seconds, 2)
                )
                results["batch"][name] = res["descriptors_per_s"]
                say(f"BatchStat {name}: {res['descriptors_per_s']:.0f} descriptors/s")
        if redis_addr:
            peer = batch_bench.redis_peer(redis_addr, batch, sizes.batch_seconds)
            results["redis_peer"] = peer["descriptors_per_s"]
            results["redis_peer_hiredis"] = bool(peer["hiredis"])
            say(f"redis-py pipelined HMGET: {peer['descriptors_per_s']:.0f} descriptors/s")
        if h2 and "redis" in servers:
            import near_bench

            half_redis = results["unary"]["redis"] / 2
            load = H2Load(h2, servers["redis"].port, body, int(half_redis * 600), rps=half_redis).command()
            results["near"] = {
                "coherence": near_bench.coherence(servers["redis"].target, redis_addr, load, quick=sizes.quick),
                "lease": near_bench.lease_cost(redis_addr, quick=sizes.quick),
            }

        for srv in list(servers.values()):
            srv.stop()
        if "near" in results:
            import near_bench

            results["near"]["failover"] = near_bench.failover(redis_binary())

        if h2 and not args.no_auth:  # registry-token auth on the hit path (auth_bench.py)
            import auth_bench

            results["auth"] = auth_bench.measure(h2, work, sizes.rounds, sizes.n_unary)

        if h2 and not near_only:
            results["workers"] = unary_bench.workers(h2, work, hot, body, n=sizes.n_unary, rounds=sizes.rounds)

        # distribution v3.1.1's blob HEAD rate with each cache (go_bench.py).
        def start_heads_service(name: str, root: Path) -> Server:
            return service_server(name, work, service_config(root)).start()

        results["go"].update(
            go_bench.registry_heads(
                work=work,
                redis_addr=redis_addr,
                start_service=start_heads_service,
                metrics=lambda target: asyncio.run(metrics(target)),
                free_port=free_port,
                n=3000 if sizes.quick else 20000,
                rounds=1 if sizes.quick else 2,
            )
        )
    return results


def measure_in_process(sizes: Sizes) -> dict[str, Any]:
    """The in-memory cache and the statter, in this process (cache_bench.py, memory_bench.py)."""
    say(f"memory: {sizes.mem_entries} entries")
    out: dict[str, Any] = {"memory": cache_bench.memory_per_entry(sizes.mem_entries)}
    say("hit cost")
    out["hit_cost"] = cache_bench.hit_cost(sizes.mem_entries)
    say("scan resistance and coalescing")
    out["scan"] = cache_bench.scan_and_coalescing(sizes.scan_capacity)
    say("memory bounds: SetDescriptor in many repositories, Stat against a hung backend")
    out["memory_bounds"] = memory_bench.measure(sizes.quick)
    return out


def write_results(args: argparse.Namespace, info: dict[str, str], results: dict[str, Any], table: str) -> None:
    """``benchmarks/results/<stamp>.json`` and ``latest.md``; after a full run, docs/benchmarks.md."""
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    (args.out / f"{stamp}.json").write_text(json.dumps(results, indent=2))
    (args.out / "latest.md").write_text(table + "\n")
    say(f"written to {args.out}/{stamp}.json and latest.md")
    publish = args.publish or (PUBLISHED if not args.quick and args.only != "near" else None)
    if publish is not None:
        publish.write_text(published_page(info, table))
        say(f"figures written to {publish} (commit it)")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = Sizes.of(args.quick, args.rounds)
    info = machine()
    say(f"machine: {info['nproc']} x {info['cpu']}, load {info['loadavg']}")
    if PIN:
        os.sched_setaffinity(0, {CLIENT_CPU})  # this process is the Python load generator
        say(f"servers pinned to CPU {SERVER_CPU}, load generators to CPU {CLIENT_CPU}")
    else:
        say("one CPU: servers and load generators share it (nothing pinned)")
    h2 = ensure_h2load()
    if args.compare:
        import compare_bench

        with tempfile.TemporaryDirectory(prefix="descriptor-bench-") as tmp:
            code: int = compare_bench.run(
                h2, args.compare, Path(tmp), args.out, quick=sizes.quick, n=sizes.n_unary, rounds=args.rounds or 5
            )
        return code
    results: dict[str, Any] = {"machine": info, "quick": sizes.quick}
    with tempfile.TemporaryDirectory(prefix="descriptor-bench-") as tmp:
        results.update(measure_servers(args, sizes, h2, Path(tmp)))
    if args.only != "near":
        results.update(measure_in_process(sizes))
    table = render(results, sizes.mem_entries, sizes.scan_capacity)
    print(table)
    write_results(args, info, results, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
