"""Before and after in one run: ``./dev bench --quick --compare REF``.

The served figures of ``./dev bench`` (the ones a restructuring or a hot-path change can
move) for two trees at once: *before*, the sources of the git ref ``REF`` (its
``client/`` and ``server/``, exported with ``git archive`` into a temporary directory,
so nothing is left behind in the repository), and *after*, this checkout as it is on
disk (uncommitted changes included). Both run with this interpreter and its virtual
environment, on loopback, side by side:

- the no-op servicer (one, shared: the machine's ceiling), and for each tree the service
  with the in-memory cache and the service with the Redis cache (one Valkey/Redis
  server, shared: the same keys, primed by both);
- unary ``Stat`` hits through h2load (one connection, 16 streams), rounds interleaved and
  the order of the two trees swapped every round, so drift and other load on the
  machine hit both; each service's GetMetrics must count one hit per call;
- ``BatchStat`` of 1,000 hits (this process as the client), the two trees back to back
  in each round, and the redis-py peer pipelining ``HMGET`` to the same Redis.

It prints each figure and each goal ratio of ``./dev bench`` that these servers give
(``x no-op``, BatchStat against unary Stat and against the peer) for both trees, at
their best round, and after ÷ before as the median of the rounds' quotients with their
range: each round measures the two trees back to back, so a quotient is taken under one
load, while the best rounds of a busy machine may be minutes apart. The in-process
figures (memory per entry, hit cost, the near cache's lease) import the modules by their
paths, which a move changes, so they are not compared; ``./dev bench --quick`` on each
tree gives them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import batch_bench
import unary_bench
from common import (
    HERE,
    ROOT,
    Server,
    digest_of,
    framed,
    pb,
    prime,
    redis_server,
    say,
    service,
    stat_request,
)

#: The two trees, in the order the table shows them.
TREES = ("before", "after")


@contextlib.contextmanager
def exported(ref: str) -> Iterator[tuple[Path, str]]:
    """``ref``'s ``client/`` and ``server/`` in a temporary directory, and a label for it."""
    label = subprocess.run(
        ["git", "-C", str(ROOT), "log", "-1", "--format=%h %s", ref], capture_output=True, text=True, check=False
    )
    if label.returncode != 0:
        raise SystemExit(f"--compare {ref}: not a commit here ({label.stderr.strip()})")
    with tempfile.TemporaryDirectory(prefix="descriptor-bench-before-") as tmp:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar", ref, "client", "server"],
            capture_output=True,
            check=True,
        )
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        yield Path(tmp), label.stdout.strip()


def this_tree() -> str:
    """A label for the checkout: its commit, and whether it has uncommitted changes."""
    head = subprocess.run(
        ["git", "-C", str(ROOT), "log", "-1", "--format=%h %s"], capture_output=True, text=True, check=False
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "client", "server"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return f"{head}{' + uncommitted changes' if dirty else ''}"


def measure(h2: str | None, ref: str, work: Path, *, n: int, rounds: int, batch_seconds: float) -> dict[str, Any]:
    """Every figure of both trees, interleaved (see the module documentation)."""
    hot = digest_of(0, "unary")
    batch = [digest_of(i, "batch") for i in range(1000)]
    batch_request = pb.BatchStatRequest(digests=batch).SerializeToString()
    body = work / "stat.grpc"
    body.write_bytes(framed(stat_request(hot)))
    #: Per figure, its value in each round (index r: round r + 1).
    out: dict[str, Any] = {"ref": ref, "rounds": rounds, "unary": {}, "batch": {}}
    with ExitStack() as stack:
        before, out["before"] = stack.enter_context(exported(ref))
        out["after"] = this_tree()
        trees = {"before": before, "after": ROOT}
        servers: dict[str, Server] = {}

        def start(server: Server) -> None:
            servers[server.name] = server.start()
            stack.callback(server.stop)

        start(Server("noop", [sys.executable, str(HERE / "noop_server.py")], work))
        redis_addr = stack.enter_context(redis_server(work))
        for tree, root in trees.items():
            tree_work = work / tree
            tree_work.mkdir()
            start(service(f"inmemory-{tree}", tree_work, "inmemory", tree=root))
            if redis_addr:
                start(service(f"redis-{tree}", tree_work, "redis", redis_addr, tree=root))
        for name, server in servers.items():
            if name != "noop":
                asyncio.run(prime(server.target, [hot, *batch]))
        say(f"before: {out['before']} ({before}); after: {out['after']} ({ROOT})")

        def services(r: int) -> list[str]:
            """The services in round ``r``'s order: per cache, the two trees, swapped every round."""
            order = TREES if r % 2 == 0 else TREES[::-1]
            names = (f"{cache}-{tree}" for cache in ("inmemory", "redis") for tree in order)
            return [name for name in names if name in servers]

        if h2:
            unary: dict[str, list[float]] = {name: [] for name in servers}
            cpu: dict[str, list[float]] = {}
            for r in range(rounds):
                ordered = {name: servers[name] for name in ["noop", *services(r)]}
                for name, rates in unary_bench.rates(h2, ordered, body, n, 1, cpu=cpu).items():
                    unary[name] += rates
            out["unary"] = unary
            if all(len(v) == rounds for v in cpu.values()) and len(cpu) == len(servers):
                out["cpu"] = cpu  # µs of server CPU per Stat call, per round
        else:
            say("h2load missing: the unary Stat figures are skipped")
        for r in range(rounds):
            for name in services(r):
                res = asyncio.run(batch_bench.batch_load(servers[name].target, batch_request, 1000, batch_seconds, 2))
                out["batch"].setdefault(name, []).append(res["descriptors_per_s"])
                say(f"round {r + 1}: BatchStat {name}: {res['descriptors_per_s']:.0f} descriptors/s")
        if redis_addr:
            out["redis_peer"] = batch_bench.redis_peer(redis_addr, batch, batch_seconds)["descriptors_per_s"]
    return out


#: The figures compared: (name, unit, what it is of one tree's values in one round).
#: The values: ``noop``, ``peer`` (shared), ``inmemory`` / ``redis`` (unary Stat hits/s),
#: ``batch-inmemory`` / ``batch-redis`` (BatchStat descriptors/s).
#: ``cpu-<name>``: µs of the server's CPU per unary Stat call (steadier than the rate on a
#: shared machine: the rate moves with what else runs, the CPU a call takes much less).
FIGURES: tuple[tuple[str, str, Callable[[dict[str, float]], float]], ...] = (
    ("Stat hit, inmemory cache", "calls/s", lambda v: v["inmemory"]),
    ("  ÷ no-op servicer (goal ≥ 0.9x)", "x", lambda v: v["inmemory"] / v["noop"]),
    ("  server CPU per call", "µs", lambda v: v["cpu-inmemory"]),
    ("  no-op's CPU per call ÷ this", "x", lambda v: v["cpu-noop"] / v["cpu-inmemory"]),
    ("Stat hit, redis cache", "calls/s", lambda v: v["redis"]),
    ("  ÷ no-op servicer", "x", lambda v: v["redis"] / v["noop"]),
    ("  server CPU per call", "µs", lambda v: v["cpu-redis"]),
    ("  no-op's CPU per call ÷ this", "x", lambda v: v["cpu-noop"] / v["cpu-redis"]),
    ("BatchStat 1000 hits, inmemory cache", "descriptors/s", lambda v: v["batch-inmemory"]),
    ("  ÷ unary Stat hits (goal ≥ 100x)", "x", lambda v: v["batch-inmemory"] / v["inmemory"]),
    ("  ÷ redis-py pipelined HMGET (goal ≥ 2.5x)", "x", lambda v: v["batch-inmemory"] / v["peer"]),
    ("BatchStat 1000 hits, redis cache", "descriptors/s", lambda v: v["batch-redis"]),
    ("  ÷ unary Stat hits", "x", lambda v: v["batch-redis"] / v["redis"]),
)


def values(res: dict[str, Any], tree: str, r: int | None) -> dict[str, float]:
    """One tree's values in round ``r`` (None: the best round of each)."""

    def pick(series: list[float]) -> float:
        return max(series) if r is None else series[r]

    suffix = f"-{tree}"
    out = {name.removesuffix(suffix): pick(v) for name, v in res["unary"].items() if name.endswith(suffix)}
    for name, v in res["batch"].items():
        if name.endswith(suffix):
            out["batch-" + name.removesuffix(suffix)] = pick(v)
    if "noop" in res["unary"]:
        out["noop"] = pick(res["unary"]["noop"])
    for name, v in res.get("cpu", {}).items():  # the best round of CPU per call is the least
        if name.endswith(suffix) or name == "noop":
            out["cpu-" + name.removesuffix(suffix)] = min(v) if r is None else v[r]
    if "redis_peer" in res:
        out["peer"] = res["redis_peer"]
    return out


def of(figure: Callable[[dict[str, float]], float], v: dict[str, float]) -> float | None:
    try:
        return figure(v)
    except (KeyError, ZeroDivisionError):
        return None


def render(res: dict[str, Any]) -> str:
    """The table: each figure's best round per tree, and the median (and range) of the
    rounds' after ÷ before (each round measures the two trees back to back)."""

    def fmt(value: float | None, unit: str) -> str:
        if value is None:
            return "-"
        if unit == "µs":
            return f"{value:,.1f} {unit}"
        return f"{value:.2f}x" if unit == "x" else f"{value:,.0f} {unit}"

    lines = [
        f"before: {res['before']}",
        f"after:  {res['after']}",
        "",
        f"| figure | before | after | after ÷ before: median of {res['rounds']} rounds (range) |",
        "|---|--:|--:|--:|",
    ]
    best = {tree: values(res, tree, None) for tree in TREES}
    for name, unit, figure in FIGURES:
        before, after = of(figure, best["before"]), of(figure, best["after"])
        if before is None and after is None:
            continue
        quotients = []
        for r in range(res["rounds"]):
            b, a = of(figure, values(res, "before", r)), of(figure, values(res, "after", r))
            if a is not None and b:
                quotients.append(a / b)
        quotient = (
            f"{statistics.median(quotients):.3f} ({min(quotients):.2f} to {max(quotients):.2f})" if quotients else "-"
        )
        lines.append(f"| {name} | {fmt(before, unit)} | {fmt(after, unit)} | {quotient} |")
    shared = best["after"]
    lines.append("")
    if "noop" in shared:
        lines.append(f"Shared by both: the no-op servicer, {shared['noop']:,.0f} calls/s (best round)")
    if "peer" in shared:
        lines.append(f"Shared by both: redis-py pipelined 1000 HMGET, {shared['peer']:,.0f} descriptors/s")
    return "\n".join(lines)


def run(h2: str | None, ref: str, work: Path, out_dir: Path, *, quick: bool, n: int, rounds: int) -> int:
    """Measure, print the table, and write it (and the raw figures) to ``out_dir``."""
    res = measure(h2, ref, work, n=n, rounds=rounds, batch_seconds=1.0 if quick else 4.0)
    table = render(res)
    print(table)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    (out_dir / f"compare-{stamp}.json").write_text(json.dumps(res, indent=2))
    (out_dir / "compare-latest.md").write_text(table + "\n")
    say(f"written to {out_dir}/compare-{stamp}.json and compare-latest.md")
    return 0
