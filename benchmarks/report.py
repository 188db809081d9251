"""The results table (``benchmarks/results/latest.md``) and the committed page of figures.

:func:`render` turns one run's results into the table; :func:`published_page` is
``docs/benchmarks.md``, the one committed page of dated figures the docs link to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import go_bench
import memory_bench
from common import ROOT

#: The one committed page of dated figures (the docs link to it); a full run rewrites it.
PUBLISHED: Path = ROOT / "docs" / "benchmarks.md"


def published_page(info: dict[str, str], table: str) -> str:
    """docs/benchmarks.md: the date, the machine and the table of one run."""
    return (
        "# Benchmark figures\n\n"
        "Written by `./dev bench` (a full run rewrites this file; `benchmarks/README.md` says what\n"
        "each row measures and how, [performance.md](performance.md) what the figures mean and\n"
        "why some goals are not met). Absolute figures depend on the machine and its load; the\n"
        "ratios, taken minutes apart in one run, are what the goals are about.\n\n"
        f"Run of {info['date']}: `nproc` {info['nproc']}, {info['cpu'] or 'unknown CPU'}, "
        f"Python {info['python']}, grpcio {info['grpcio']}, load average {info['loadavg']} at the start.\n\n"
        + table
        + "\n"
    )


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
