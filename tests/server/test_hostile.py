"""Hostile clients: calls that never send their request, and calls the server sheds.

A gRPC call is headers, then the request message. A client can send the headers and
nothing else, on thousands of calls at once. These tests run a real server and such a
client (grpc.aio calls that open and never write) and check what an operator relies on:

- a call that sends no request ends after ``grpc.requesttimeout`` (INVALID_ARGUMENT /
  ``REQUEST_INVALID``), so it cannot hold memory for good;
- with auth on, a call without an acceptable token is refused UNAUTHENTICATED from
  its metadata, before any message;
- ``grpc.maxstreams`` bounds the calls one connection holds open, so the server's
  memory stays flat under thousands of bodiless calls, and ``grpc.maxconnections``
  bounds the connections;
- bodiless calls do not count against ``grpc.maxconcurrentcalls`` (only calls being
  handled do), so they cannot lock Stats out;
- a call shed by ``grpc.maxconcurrentcalls`` is counted in
  ``grpc_server_handled_total{grpc_code="RESOURCE_EXHAUSTED"}`` and logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path
from typing import Any

import grpc
import pytest
from descriptor_client import DescriptorClient, ResourceExhaustedError
from descriptor_client._proto.descriptor.v1 import descriptor_pb2 as pb
from descriptor_client.errors import from_rpc_error
from helpers.support import REPO, Layout, ServerProcess, base_config, running_server, wait_for

STAT = "/descriptor.v1.BlobDescriptorService/Stat"
TOKEN = "hostile-test-token"


def rss_mb(server: ServerProcess) -> float:
    assert server.proc is not None
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def open_bodiless(target: str, count: int, *, channels: int = 1, metadata: Any = None) -> list[Any]:
    """``count`` Stat calls that send their headers and never their request."""
    opened: list[Any] = []
    for _i in range(channels):
        channel = grpc.aio.insecure_channel(target)
        call = channel.stream_unary(STAT)
        opened.append(channel)
        for _ in range(count // channels):
            opened.append(call(metadata=metadata))
    return opened


async def outcomes(calls: list[Any], timeout: float) -> dict[str, int]:
    """How the calls ended (status code name), waiting at most ``timeout`` in all."""
    ends: dict[str, int] = {}
    done = await asyncio.gather(*(asyncio.wait_for(c, timeout) for c in calls), return_exceptions=True)
    for result in done:
        if isinstance(result, grpc.aio.AioRpcError):
            key = result.code().name
        elif isinstance(result, (asyncio.TimeoutError, TimeoutError)):
            key = "still open"
        else:
            key = type(result).__name__
        ends[key] = ends.get(key, 0) + 1
    return ends


async def close(opened: list[Any]) -> None:
    for item in opened:
        if isinstance(item, grpc.aio.Channel):
            await item.close()
        else:
            item.cancel()


def stat_ok(target: str, digest: str) -> None:
    with DescriptorClient(target, timeout=10) as client:
        assert client.stat(digest, REPO).digest == digest


@pytest.fixture
def blob(layout: Layout) -> str:
    return layout.push(REPO, b"a layer the hostile client cannot hide")


async def test_a_call_without_its_request_ends_after_the_request_timeout(
    tmp_path: Path, layout: Layout, blob: str
) -> None:
    with running_server(base_config(layout.root, requesttimeout="1s"), tmp_path) as server:
        opened = await open_bodiless(server.target, 50)
        try:
            start = time.monotonic()
            ends = await outcomes([c for c in opened if not isinstance(c, grpc.aio.Channel)], timeout=20)
            took = time.monotonic() - start
            # INVALID_ARGUMENT / REQUEST_INVALID; a client that has not finished writing
            # may see the end of its call as CANCELLED instead. None stays open.
            assert set(ends) <= {"INVALID_ARGUMENT", "CANCELLED"}, ends
            assert ends.get("INVALID_ARGUMENT", 0) > 0, ends
            assert took < 10, took
        finally:
            await close(opened)
        stat_ok(server.target, blob)  # the server is as it was


async def test_the_request_timeout_answers_request_invalid(tmp_path: Path, layout: Layout) -> None:
    with running_server(base_config(layout.root, requesttimeout="500ms"), tmp_path) as server:
        async with grpc.aio.insecure_channel(server.target) as channel:
            call = channel.stream_unary(STAT)()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await asyncio.wait_for(call, 20)
    err = from_rpc_error(info.value)
    assert (err.code, err.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_INVALID")
    assert "grpc.requesttimeout" in err.message
    wait_for(lambda: "REQUEST_INVALID" in server.output, timeout=10)  # and the call log says so


async def test_an_unauthenticated_call_is_refused_before_its_request(tmp_path: Path, layout: Layout) -> None:
    config = base_config(layout.root, requesttimeout="60s")
    config["auth"] = {"tokens": [{"name": "ci", "scope": "read", "sha256": hashlib.sha256(TOKEN.encode()).hexdigest()}]}
    with running_server(config, tmp_path) as server:
        for metadata in (None, (("authorization", "Bearer not-a-token"),)):
            async with grpc.aio.insecure_channel(server.target) as channel:
                call = channel.stream_unary(STAT)(metadata=metadata)
                start = time.monotonic()
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await asyncio.wait_for(call, 20)  # no request ever sent: refused anyway
                assert time.monotonic() - start < 10
            err = from_rpc_error(info.value)
            assert (err.code, err.reason) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
        # A good token still waits for its request, and is then answered.
        digest = layout.push(REPO, b"for the token holder")
        with DescriptorClient(server.target, token=TOKEN, timeout=10) as client:
            assert client.stat(digest, REPO).digest == digest
        # The refusals are on the audit log (read from the server's stderr as it comes).
        wait_for(
            lambda: 'outcome="UNAUTHENTICATED"' in server.output or '"outcome": "UNAUTHENTICATED"' in server.output,
            timeout=10,
        )


async def test_memory_stays_flat_under_thousands_of_bodiless_calls(tmp_path: Path, layout: Layout, blob: str) -> None:
    """3,000 bodiless calls over 3 connections (about 20 KB each when the server holds
    them all): the defaults (100 calls per connection) keep the server's memory flat,
    and a Stat on another connection is answered meanwhile."""
    with running_server(base_config(layout.root), tmp_path) as server:
        stat_ok(server.target, blob)
        before = rss_mb(server)
        opened = await open_bodiless(server.target, 3000, channels=3)
        try:
            await asyncio.sleep(0)  # let the calls go out
            # Until the server holds as many as it will take (3 x 100 streams).
            deadline = time.monotonic() + 5
            peak = before
            while time.monotonic() < deadline:
                peak = max(peak, rss_mb(server))
                await asyncio.sleep(0.1)
            stat_ok(server.target, blob)
        finally:
            await close(opened)
    assert peak - before < 25, (before, peak)


async def test_bodiless_calls_do_not_lock_stats_out(tmp_path: Path, layout: Layout, blob: str) -> None:
    """grpc.maxconcurrentcalls bounds calls being handled, not calls waiting for a request."""
    with running_server(base_config(layout.root, maxconcurrentcalls=5, requesttimeout="60s"), tmp_path) as server:
        opened = await open_bodiless(server.target, 20)
        try:
            await asyncio.sleep(0.5)
            for _ in range(3):
                stat_ok(server.target, blob)
        finally:
            await close(opened)


def test_connections_are_bounded(tmp_path: Path, layout: Layout, blob: str) -> None:
    with running_server(base_config(layout.root, maxconnections=2), tmp_path) as server:
        channels = [
            grpc.insecure_channel(server.target, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(3)
        ]
        try:
            stats = [c.unary_unary(STAT, request_serializer=pb.StatRequest.SerializeToString) for c in channels]
            stats[0](pb.StatRequest(digest=blob), timeout=10)
            stats[1](pb.StatRequest(digest=blob), timeout=10)
            with pytest.raises(grpc.RpcError) as info:
                stats[2](pb.StatRequest(digest=blob), timeout=3, wait_for_ready=False)
            assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
            channels[0].close()
            # A closed connection frees its place.
            wait_for(lambda: _answers(stats[2], blob), timeout=20, interval=0.2)
        finally:
            for c in channels:
                c.close()


def _answers(stat: Any, digest: str) -> bool:
    try:
        stat(pb.StatRequest(digest=digest), timeout=2)
    except grpc.RpcError:
        return False
    return True


# -- item: shed calls are visible ---------------------------------------------------------


class HeldStat:
    """A repository Stat held in the server: its link file is a FIFO with no writer."""

    def __init__(self, layout: Layout, target: str, digest: str, repo: str) -> None:
        self.link = layout.link(repo, digest)
        self.link.parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(self.link)
        self.pool = ThreadPoolExecutor(1)
        self.client = DescriptorClient(target, timeout=60)
        self.future = self.pool.submit(self.client.stat, digest, repo)
        self.digest = digest
        self.fd = -1
        wait_for(self._reader_waiting, timeout=15)

    def _reader_waiting(self) -> bool:
        try:
            self.fd = os.open(self.link, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            return False
        return True

    def release(self) -> None:
        with suppress(OSError):
            os.write(self.fd, self.digest.encode())
            os.close(self.fd)
        self.future.result(timeout=30)
        self.pool.shutdown()
        self.client.close()


def scrape(server: ServerProcess) -> str:
    m = re.search(r"metrics endpoint at (http://\S+)", server.output)
    assert m, server.output
    with urllib.request.urlopen(m.group(1), timeout=10) as resp:
        text: str = resp.read().decode()
    return text


def handled(text: str, method: str, code: str) -> float:
    pattern = rf'grpc_server_handled_total\{{[^}}]*grpc_code="{code}"[^}}]*grpc_method="{method}"[^}}]*\}} (\S+)'
    m = re.search(pattern, text)
    return float(m.group(1)) if m else 0.0


def test_shed_calls_are_counted_and_logged(tmp_path: Path, layout: Layout) -> None:
    config = base_config(layout.root, maxconcurrentcalls=1)
    config["http"] = {"debug": {"addr": "127.0.0.1:0", "prometheus": {"enabled": True}}}
    digest = layout.put_blob(b"held while another is shed")
    with running_server(config, tmp_path) as server:
        held = HeldStat(layout, server.target, digest, "held/repo")
        try:
            with DescriptorClient(server.target, timeout=10) as client, pytest.raises(ResourceExhaustedError) as info:
                client.stat(digest)
        finally:
            held.release()
        text = scrape(server)
        assert handled(text, "Stat", "RESOURCE_EXHAUSTED") == 1, text
        started = re.search(r'grpc_server_started_total\{[^}]*grpc_method="Stat"[^}]*\} (\S+)', text)
        assert started is not None
        total = sum(
            float(v) for v in re.findall(r'grpc_server_handled_total\{[^}]*grpc_method="Stat"[^}]*\} (\S+)', text)
        )
        assert total == float(started.group(1))  # every started call is handled: none looks stuck
        assert re.search(r"RESOURCE_EXHAUSTED", server.output), server.output
        assert "grpc.maxconcurrentcalls" in info.value.message
