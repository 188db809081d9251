"""SIGTERM loses no call: every call the server received completes or gets UNAVAILABLE.

Real servers started as processes; 200 calls outstanding on one channel when SIGTERM
arrives, from the Python client and from the Node.js client, 20 cycles each; and a
rolling restart of two replicas behind one round-robin target, which fails no call.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from descriptor_client import AsyncDescriptorClient, DescriptorClient, DescriptorError, ServerDrainingError
from helpers.support import OCT, Layout, ServerProcess, base_config, free_port, wait_for

CYCLES = 20
OUTSTANDING = 200
NODE_DIR = Path(__file__).resolve().parents[1] / "node"


def outcome(result: object) -> str:
    """OK, a draining refusal, or the code of any other failure (CANCELLED is a lost call)."""
    if isinstance(result, ServerDrainingError):
        return "SERVER_DRAINING"
    if isinstance(result, DescriptorError):
        return result.code.name
    if isinstance(result, BaseException):
        raise result
    return "OK"


async def outstanding_across_sigterm(proc: ServerProcess, blob: str) -> Counter[str]:
    async with AsyncDescriptorClient(proc.target, timeout=30) as client:
        await client.stat(blob)  # connected, and the blob cached: every call is a hit
        calls = [asyncio.ensure_future(client.stat(blob)) for _ in range(OUTSTANDING)]
        await asyncio.sleep(0)  # the calls are sent
        proc.signal(signal.SIGTERM)
        results = await asyncio.gather(*calls, return_exceptions=True)
    return Counter(outcome(r) for r in results)


def test_sigterm_with_200_outstanding_python_calls_loses_none(tmp_path: Path, layout: Layout) -> None:
    blob = layout.put_blob(b"held across a restart")
    totals: Counter[str] = Counter()
    for cycle in range(CYCLES):
        proc = ServerProcess(base_config(layout.root, drain="10s"), tmp_path).start()
        try:
            counts = asyncio.run(outstanding_across_sigterm(proc, blob))
            assert proc.wait(30) == 0
        finally:
            proc.stop()
        assert sum(counts.values()) == OUTSTANDING
        assert set(counts) <= {"OK", "SERVER_DRAINING", "UNAVAILABLE"}, (cycle, counts)
        totals += counts
    assert totals["CANCELLED"] == 0


def test_sigterm_with_200_outstanding_node_calls_loses_none(tmp_path: Path, layout: Layout) -> None:
    if shutil.which("node") is None or not (NODE_DIR / "node_modules").is_dir():
        pytest.skip("node or tests/node/node_modules missing (./dev test installs them)")
    blob = layout.put_blob(b"held across a restart, from node")
    totals: Counter[str] = Counter()
    for cycle in range(CYCLES):
        proc = ServerProcess(base_config(layout.root, drain="10s"), tmp_path).start()
        try:
            with DescriptorClient(proc.target) as client:
                client.stat(blob)
            assert proc.proc is not None
            out = subprocess.run(
                ["node", "drain.mjs", proc.target, blob, str(OUTSTANDING), str(proc.proc.pid)],
                cwd=NODE_DIR,
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            assert proc.wait(30) == 0
        finally:
            proc.stop()
        counts = Counter(json.loads(out.stdout))
        assert sum(counts.values()) == OUTSTANDING
        assert set(counts) <= {"OK", "UNAVAILABLE/SERVER_DRAINING", "UNAVAILABLE"}, (cycle, counts)
        totals += counts
    assert totals["CANCELLED"] == 0


def test_rolling_restart_of_two_replicas_fails_no_call(tmp_path: Path, layout: Layout) -> None:
    """Stop one replica, start it again, wait until it serves the load, then the other."""
    blob = layout.put_blob(b"served through a rolling restart")
    ports = [free_port(), free_port()]
    dirs = []
    for i in range(2):
        (tmp_path / str(i)).mkdir()
        dirs.append(tmp_path / str(i))

    def start(i: int) -> ServerProcess:
        return ServerProcess(base_config(layout.root, drain="10s", addr=f"127.0.0.1:{ports[i]}"), dirs[i]).start()

    def served(i: int) -> int:
        """Stat calls replica i has answered (asked of it alone)."""
        with DescriptorClient(f"127.0.0.1:{ports[i]}", timeout=10) as direct:
            return direct.metrics().requests

    replicas = [start(0), start(1)]
    failures: list[str] = []
    answered = 0
    stop = threading.Event()

    # One client (one channel, four threads): the replica restarted first has served the
    # load's calls, so is in this channel's rotation, before the second one is stopped.
    with DescriptorClient(f"127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}", timeout=20) as client:

        def load() -> None:
            nonlocal answered
            while not stop.is_set():
                try:
                    assert client.stat(blob).media_type == OCT
                    answered += 1
                except DescriptorError as err:
                    failures.append(f"{err.code.name} {err.reason}: {err.message}")

        workers = [threading.Thread(target=load) for _ in range(4)]
        try:
            for w in workers:
                w.start()
            wait_for(lambda: answered > 50, timeout=20)
            drains = []
            for i in range(2):  # one replica at a time: stop it, start it again, wait until it serves
                replicas[i].signal(signal.SIGTERM)
                assert replicas[i].wait(30) == 0
                drains.append(replicas[i].output)
                replicas[i] = start(i)
                wait_for(lambda i=i: served(i) > 50, timeout=20)
        finally:
            stop.set()
            for w in workers:
                w.join(30)
            for r in replicas:
                r.stop()
    assert failures == []
    assert answered > 100
    # The clients stopped calling the draining replica (health NOT_SERVING), so each drain
    # ended within its quiet window, not by running out of grpc.drain.
    for output in drains:
        assert re.search(r"drained in \d+\.\ds: nothing in flight", output), output


def test_a_clear_answered_server_draining_is_sent_again_to_the_other_replica(tmp_path: Path, layout: Layout) -> None:
    """SERVER_DRAINING promises nothing was done, so even a Clear (not idempotent) is sent again."""
    blobs = [layout.put_blob(f"cleared during a drain {i}".encode()) for i in range(10)]
    a = ServerProcess(base_config(layout.root, drain="10s"), tmp_path).start()
    (tmp_path / "b").mkdir()
    b = ServerProcess(base_config(layout.root, drain="10s"), tmp_path / "b").start()
    try:
        # Without health checking the client keeps picking A while it drains (as a client
        # does that has not yet seen A turn NOT_SERVING), so A answers SERVER_DRAINING.
        no_health = [("grpc.inhibit_health_checking", 1)]
        with DescriptorClient(f"{a.target},{b.target}", timeout=20, options=no_health) as client:
            for blob in blobs:
                client.stat(blob)  # both replicas connected (round robin)
            a.signal(signal.SIGTERM)
            wait_for(lambda: "draining" in a.output, timeout=10)
            for blob in blobs:  # calls keep arriving, so A keeps answering SERVER_DRAINING
                client.clear(blob)
        assert not any(layout.blob_data(blob).exists() for blob in blobs)
        assert a.wait(30) == 0
        assert 'method="Clear"' in a.output  # A refused some of them, and they were retried on B
    finally:
        a.stop()
        b.stop()


def test_the_drain_lines_say_what_it_waits_for_and_how_it_ended(tmp_path: Path, layout: Layout) -> None:
    """An idle server stops within the quiet window, and says so; not 'waiting for 0'."""
    server = ServerProcess(base_config(layout.root, drain="30s"), tmp_path).start()
    try:
        start = time.monotonic()
        server.signal()
        assert server.wait(30) == 0
        took = time.monotonic() - start
    finally:
        server.stop()
    assert took < 10, took
    first = next(line for line in server.lines if "draining:" in line)
    assert "0 in flight" in first
    assert "no call has come for 0.5s" in first
    assert "grpc.drain (30s)" in first
    assert re.search(r"drained in \d+\.\ds: nothing in flight", server.output), server.output
