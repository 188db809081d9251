"""Unary Stat through h2load: the rate against each server, the latency, ``--workers``.

- :func:`rates`: the same h2load run against every server, rounds interleaved, best kept;
  each service's GetMetrics must count one hit per call;
- :func:`latency`: p50/p99 at half the in-memory maximum and at a light 100 calls/s,
  against the service and the no-op servicer (what the machine itself adds);
- :func:`workers`: 1 versus 2 worker processes on the shared port, 4 connections,
  nothing pinned.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common import H2Load, Server, metrics, percentiles_ms, prime, say, service


def rates(
    h2: str,
    servers: Mapping[str, Server],
    body: Path,
    n: int,
    rounds: int,
    *,
    cpu: dict[str, list[float]] | None = None,
) -> dict[str, list[float]]:
    """Stat calls per second of each server in each round (the no-op servicer counts nothing);
    with ``cpu``, each server's CPU time per call in µs in each round is appended to it too."""
    unary: dict[str, list[float]] = {name: [] for name in servers}
    for r in range(rounds):
        for name, srv in servers.items():
            before = asyncio.run(metrics(srv.target)) if name != "noop" else None
            cpu_before = srv.cpu_seconds() if cpu is not None else None
            res = H2Load(h2, srv.port, body, n).run()
            cpu_after = srv.cpu_seconds() if cpu is not None else None
            if cpu is not None and cpu_before is not None and cpu_after is not None:
                cpu.setdefault(name, []).append((cpu_after - cpu_before) / n * 1e6)
            if res["failed"]:
                raise RuntimeError(f"{name}: {res['failed']} failed requests")
            if before is not None:
                after = asyncio.run(metrics(srv.target))
                hits = after.hits - before.hits
                if hits != n:
                    raise RuntimeError(f"{name}: {hits} cache hits for {n} Stat calls")
            unary[name].append(res["rps"])
            say(f"round {r + 1}: Stat {name}: {res['rps']:.0f}/s")
    return unary


def latency(
    h2: str, servers: Mapping[str, Server], body: Path, work: Path, *, half: float, quick: bool
) -> dict[str, Any]:
    """p50/p99 at ``half`` calls/s and at 100 calls/s, for the in-memory service and the no-op servicer."""
    seconds = 3 if quick else 8
    out: dict[str, Any] = {"rate": half}
    low = 100.0  # a light load: the server model's own floor
    for name in ("inmemory", "noop"):
        log = work / f"latency-low-{name}.log"
        H2Load(h2, servers[name].port, body, int(low * seconds), rps=low, log=log).run()
        p50, p99, samples = percentiles_ms(log)
        out[f"{name}_low"] = {"p50_ms": p50, "p99_ms": p99, "samples": samples}
        log = work / f"latency-{name}.log"
        res = H2Load(h2, servers[name].port, body, int(half * seconds), rps=half, log=log).run()
        p50, p99, samples = percentiles_ms(log)
        out[name] = {"p50_ms": p50, "p99_ms": p99, "samples": samples, "achieved_rps": res["rps"]}
        say(f"{name} at {half:.0f}/s: p50 {p50:.2f} ms, p99 {p99:.2f} ms ({samples} samples)")
    return out


def workers(h2: str, work: Path, hot: str, body: Path, *, n: int, rounds: int) -> dict[str, float]:
    """Best Stat rate with ``--workers 1`` and ``--workers 2`` (4 connections, unpinned).

    Each worker has its own in-memory cache: the hot blob must be on disk, so the first
    Stat in each worker fills its cache from the backend.
    """
    scaling: dict[str, float] = {}
    for count in (1, 2):
        svc = service(f"workers{count}", work, "inmemory", args=["--workers", str(count)])
        svc.start(pin=False)
        try:
            asyncio.run(prime(svc.target, [hot]))
            best = 0.0
            for _ in range(rounds):
                best = max(best, H2Load(h2, svc.port, body, n, clients=4, pin=False).run()["rps"])
            scaling[str(count)] = best
            say(f"--workers {count}: {best:.0f}/s (4 connections, unpinned)")
        finally:
            svc.stop()
    return scaling
