"""``health()`` of both Python clients against the real server (grpc.health.v1.Health/Check)."""

from __future__ import annotations

import re
import threading
import urllib.request
from pathlib import Path

import pytest
from descriptor_client import AsyncDescriptorClient, DeadlineExceededError, DescriptorClient, UnavailableError
from helpers.fifo_support import make_fifo, release
from helpers.support import REPO, Layout, ServerProcess, base_config, refused_port, running_server, wait_for
from prometheus_client.parser import text_string_to_metric_families

SERVICE = "descriptor.v1.BlobDescriptorService"


def test_health_of_the_service_and_of_the_server(server: ServerProcess) -> None:
    with DescriptorClient(server.target) as client:
        assert client.health() == "SERVING"
        assert client.health(SERVICE) == "SERVING"
        assert client.health("") == "SERVING"


def test_unknown_service(server: ServerProcess) -> None:
    with DescriptorClient(server.target) as client:
        assert client.health("foo") == "SERVICE_UNKNOWN"
        assert client.health("\ud800") == "SERVICE_UNKNOWN"  # not sendable: no service can have this name


def test_the_client_needs_no_grpc_health_package() -> None:
    """The health messages are the client's own (grpcio-health-checking is the server's)."""
    from descriptor_client import _wire
    from grpc_health.v1 import health_pb2

    request = _wire.HealthCheckRequest(service=SERVICE)
    assert health_pb2.HealthCheckRequest.FromString(request.SerializeToString()).service == SERVICE
    for number, name in enumerate(_wire.SERVING_STATUSES):
        assert health_pb2.HealthCheckResponse.ServingStatus.Name(number) == name
        wire = health_pb2.HealthCheckResponse(status=number).SerializeToString()
        assert _wire.health_status(_wire.HealthCheckResponse.FromString(wire)) == name


def test_not_serving_without_its_storage(tmp_path: Path) -> None:
    with running_server(base_config(tmp_path / "missing"), tmp_path) as broken, DescriptorClient(broken.target) as c:
        assert c.health() == "NOT_SERVING"  # readiness
        assert c.health("") == "SERVING"  # liveness


def test_no_server_is_unavailable() -> None:
    with refused_port() as port, DescriptorClient(f"127.0.0.1:{port}", timeout=2) as client:
        with pytest.raises(UnavailableError) as raised:
            client.health()
        assert raised.value.code.name in {"UNAVAILABLE", "DEADLINE_EXCEEDED"}


def inflight(server: ServerProcess) -> float:
    """``grpc_server_inflight`` of the descriptor service, scraped from the metrics endpoint."""
    url = re.search(r"metrics endpoint at (http://\S+)", server.output)
    assert url, server.output
    with urllib.request.urlopen(url.group(1), timeout=10) as resp:
        text = resp.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "grpc_server_inflight" and sample.labels.get("grpc_service") == SERVICE:
                return float(sample.value)
    raise AssertionError("grpc_server_inflight not exposed")


def test_not_serving_while_draining(tmp_path: Path, layout: Layout) -> None:
    blob = layout.put_blob(b"held while draining")
    fifo = make_fifo(layout.link(REPO, blob))
    config = base_config(layout.root, drain="30s")
    config["http"] = {"debug": {"addr": "127.0.0.1:0", "prometheus": {"enabled": True}}}
    with running_server(config, tmp_path) as server:
        outcome: list[object] = []

        def held_call() -> None:
            with DescriptorClient(server.target, timeout=30) as client:
                outcome.append(client.stat(blob, REPO))

        caller = threading.Thread(target=held_call, daemon=True)
        caller.start()
        released = False
        try:
            wait_for(lambda: inflight(server) == 1)
            with DescriptorClient(server.target) as client:
                server.signal()
                wait_for(lambda: client.health("") == "NOT_SERVING")
                assert client.health() == "NOT_SERVING"
            released = release(fifo, blob)
            caller.join(30)
            assert len(outcome) == 1
        finally:
            if not released:
                release(fifo, blob, timeout=1)


async def test_async_health(server: ServerProcess) -> None:
    async with AsyncDescriptorClient(server.target) as client:
        assert await client.health() == "SERVING"
        assert await client.health("") == "SERVING"
        assert await client.health("no.such.Service") == "SERVICE_UNKNOWN"


async def test_async_health_deadline(tmp_path: Path) -> None:
    # A listening socket that never speaks HTTP/2: the call can only time out.
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        target = f"127.0.0.1:{silent.getsockname()[1]}"
        async with AsyncDescriptorClient(target) as client:
            with pytest.raises(DeadlineExceededError):
                await client.health(timeout=0.5)
