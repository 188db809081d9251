#!/usr/bin/env python3
"""Memory bounded by configuration, never by what clients send (tracemalloc, in process).

Two measurements, run by ``benchmarks/run.py`` (and ``--quick``) or alone
(``.venv/bin/python benchmarks/memory_bench.py [--quick]``):

- **SetDescriptor in many repositories**: 1,000,000 calls spread over 200,000
  repositories into an in-memory cache of capacity 10,000 (quick: 100,000 calls,
  20,000 repositories, capacity 1,000). Traced memory is sampled every tenth of the
  run; once the cache is full it must stay flat (the last sample within 10% of the
  one at 20%).
- **Stat against a hung backend**: the filesystem backend whose repository links are
  FIFOs (a read blocks its thread as a stuck NFS mount does), behind
  ``BoundedBackend`` (deadline 200 ms, 8 in flight, 64 queued) and the statter.
  100,000 Stat calls (quick: 20,000), each abandoned by its caller, in waves of 1,000.
  Traced memory, asyncio tasks and work items queued in the backend's thread pool are
  sampled; memory must stay flat (within 10%). The same load without the wrapper
  (20,000 calls; quick: 5,000) is the baseline: it keeps every abandoned read queued.
  Then the "mount comes back" (the FIFOs are opened): the reads run afterwards are
  counted, 0 with the wrapper.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT / "client"), str(ROOT / "server")]

from descriptor_client.descriptor import Descriptor  # noqa: E402

OCT = "application/octet-stream"
REPO = "bench/hung"


def _digest(i: int, salt: str) -> str:
    return "sha256:" + hashlib.sha256(f"{salt}{i}".encode()).hexdigest()


def _traced() -> int:
    return tracemalloc.get_traced_memory()[0]


# -- SetDescriptor in many repositories --------------------------------------------------


def set_descriptor_flat(calls: int, repositories: int, capacity: int) -> dict[str, Any]:
    from descriptor_server.caches.inmemory import InMemoryCache

    async def run() -> list[int]:
        cache = InMemoryCache(capacity)
        samples = []
        step = calls // 10
        for i in range(calls):
            d = _digest(i, "set")
            await cache.set_descriptor(d, Descriptor(OCT, d, i), f"bench/repo-{i % repositories}")
            if (i + 1) % step == 0:
                samples.append(_traced())
        assert len(cache) == capacity
        return samples

    tracemalloc.start()
    base = _traced()
    try:
        samples = [s - base for s in asyncio.run(run())]
    finally:
        tracemalloc.stop()
    return {
        "calls": calls,
        "repositories": repositories,
        "capacity": capacity,
        "samples_bytes": samples,
        "at_20pct_bytes": samples[1],
        "final_bytes": samples[-1],
        "growth": samples[-1] / samples[1] - 1.0,
    }


# -- Stat against a hung backend ------------------------------------------------------------


class _Mount:
    """A layout whose first links are FIFOs: a read of one blocks until it is opened."""

    def __init__(self, root: Path, held: int) -> None:
        self.root = root
        self.fifos: list[Path] = []
        for i in range(held):
            hexpart = _digest(i, "hung").split(":", 1)[1]
            link = root / "docker/registry/v2/repositories" / REPO / "_layers/sha256" / hexpart / "link"
            link.parent.mkdir(parents=True, exist_ok=True)
            os.mkfifo(link)
            os.link(link, link.with_name("held"))  # a second name, to reach blocked readers later
            self.fifos.append(link)

    def come_back(self, seconds: float = 0.5) -> None:
        """The storage answers again: every link becomes a plain file, blocked readers return."""
        for path in self.fifos:
            if path.is_fifo():
                plain = path.with_name("plain")
                plain.write_text(_digest(0, "absent"))
                os.replace(plain, path)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:  # a reader may have opened the old FIFO just before
            for path in self.fifos:
                try:
                    fd = os.open(path.with_name("held"), os.O_WRONLY | os.O_NONBLOCK)
                except OSError:
                    continue  # no reader
                os.close(fd)
            time.sleep(0.01)


def _counting_backend(root: Path) -> Any:
    from descriptor_server.backends.filesystem import FilesystemBackend

    class Counting(FilesystemBackend):
        """The real filesystem backend, counting the reads its threads run."""

        def __init__(self, rootdirectory: str) -> None:
            super().__init__(rootdirectory, max_workers=8)
            self.reads = 0
            self._lock = threading.Lock()

        def _stat(self, digest: str, repository: str) -> Descriptor:
            with self._lock:
                self.reads += 1
            return super()._stat(digest, repository)

    return Counting(str(root))


def hung_backend(calls: int, bounded_on: bool, workdir: Path) -> dict[str, Any]:
    from descriptor_server.caches.inmemory import InMemoryCache
    from descriptor_server.core.statter import CachedBlobStatter
    from descriptor_server.wrappers.bounds import BoundedBackend

    root = workdir / ("bounded" if bounded_on else "unbounded")
    mount = _Mount(root, held=64)
    fs = _counting_backend(root)
    backend = BoundedBackend(fs, timeout=0.2, max_inflight=8, max_pending=64) if bounded_on else fs
    statter = CachedBlobStatter(InMemoryCache(10_000), backend)
    wave = 1000

    async def run() -> dict[str, Any]:
        samples: list[dict[str, int]] = []
        base = _traced()
        for start in range(0, calls, wave):
            tasks = [asyncio.ensure_future(statter.stat(_digest(i, "hung"), REPO)) for i in range(start, start + wave)]
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            for t in tasks:
                t.cancel()  # the caller gives up (a deadline, a closed connection)
            await asyncio.gather(*tasks, return_exceptions=True)
            if (start + wave) % (calls // 10) == 0:
                await asyncio.sleep(0.25 if bounded_on else 0)  # past the deadline: what is left is the backlog
                samples.append(
                    {
                        "calls": start + wave,
                        "bytes": _traced() - base,
                        "tasks": len(asyncio.all_tasks()) - 1,
                        "queued_reads": fs._executor._work_queue.qsize(),
                    }
                )
        reads_before = fs.reads
        await asyncio.to_thread(mount.come_back)
        # Let whatever was left queued run (the unbounded backlog), up to a minute.
        for _ in range(600):
            settled = fs.reads
            await asyncio.sleep(0.1)
            if not fs._executor._work_queue.qsize() and fs.reads == settled:
                break
        out: dict[str, Any] = {
            "calls": calls,
            "samples": samples,
            "reads_after_mount_back": fs.reads - reads_before,
        }
        if bounded_on:
            out["shed_total"] = backend.shed_total
            out["timeouts_total"] = backend.timeouts_total
        await statter.close()
        return out

    tracemalloc.start()
    try:
        res = asyncio.run(run())
    finally:
        tracemalloc.stop()
        mount.come_back()
    first, last = res["samples"][0], res["samples"][-1]
    res["first_bytes"], res["final_bytes"] = first["bytes"], last["bytes"]
    res["growth"] = last["bytes"] / max(first["bytes"], 1) - 1.0
    res["bytes_per_call"] = last["bytes"] / calls
    res["final_tasks"], res["final_queued_reads"] = last["tasks"], last["queued_reads"]
    return res


# -- run and render ------------------------------------------------------------------------


def measure(quick: bool) -> dict[str, Any]:
    # The shedding and timeouts are the point here: their warnings would only be noise.
    logging.getLogger("descriptor_server").setLevel(logging.ERROR)
    out: dict[str, Any] = {}
    if quick:
        out["set_descriptor"] = set_descriptor_flat(100_000, 20_000, 1_000)
    else:
        out["set_descriptor"] = set_descriptor_flat(1_000_000, 200_000, 10_000)
    with tempfile.TemporaryDirectory(prefix="descriptor-membench-") as tmp:
        out["hung_bounded"] = hung_backend(20_000 if quick else 100_000, True, Path(tmp))
        out["hung_unbounded"] = hung_backend(5_000 if quick else 20_000, False, Path(tmp))
    return out


def rows(res: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    def goal(ok: bool) -> str:
        return "met" if ok else "NOT met"

    s, b, u = res["set_descriptor"], res["hung_bounded"], res["hung_unbounded"]
    return [
        (
            f"Memory, {s['calls']:,} SetDescriptor in {s['repositories']:,} repositories, capacity {s['capacity']:,}",
            f"{s['at_20pct_bytes'] / 1e6:.2f} → {s['final_bytes'] / 1e6:.2f} MB",
            f"{s['growth']:+.1%} (20% → end)",
            f"≤ +10% {goal(s['growth'] <= 0.10)}",
        ),
        (
            f"Memory, {b['calls']:,} abandoned Stat on a hung backend (bounded)",
            f"{b['first_bytes'] / 1e6:.2f} → {b['final_bytes'] / 1e6:.2f} MB",
            f"{b['growth']:+.1%} (10% → end)",
            f"≤ +10% {goal(b['growth'] <= 0.10)}",
        ),
        (
            "  tasks / queued reads left, reads run when the mount came back",
            f"{b['final_tasks']} / {b['final_queued_reads']} / {b['reads_after_mount_back']}",
            f"{b['shed_total']:,} shed, {b['timeouts_total']} timed out",
            "bounded",
        ),
        (
            f"  baseline without BoundedBackend, {u['calls']:,} calls",
            f"{u['final_bytes'] / 1e6:.2f} MB ({u['bytes_per_call']:.0f} B/call)",
            f"{u['final_tasks']:,} tasks / {u['final_queued_reads']:,} queued",
            f"{u['reads_after_mount_back']:,} reads run at once",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller counts")
    args = parser.parse_args(argv)
    res = measure(args.quick)
    print("| measurement | figure | ratio | goal |\n|---|---|---|---|")
    for row in rows(res):
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
