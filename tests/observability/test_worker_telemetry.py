"""Production telemetry (issue 16, items 3-5): complete metrics, totals across workers, logs.

Every test runs the real server command and scrapes its real endpoint; the backend that
fails and comes back is a real filesystem root that is missing, then created.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from descriptor_client import (
    BackendUnavailableError,
    BlobUnknownError,
    DescriptorClient,
    InvalidArgumentError,
    UnauthenticatedError,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from helpers.support import A256, REPO, Layout, ServerProcess, base_config, wait_for
from prometheus_client.parser import text_string_to_metric_families

SERVICE = "descriptor.v1.BlobDescriptorService"
HEALTH = "grpc.health.v1.Health"
METRICS_LINE = re.compile(r"metrics endpoint at (http://\S+)")
RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}(Z|[+-]\d\d:\d\d)$")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def with_metrics(config: dict[str, Any]) -> dict[str, Any]:
    config["http"] = {"debug": {"addr": "127.0.0.1:0", "prometheus": {"enabled": True, "path": "/metrics"}}}
    return config


@pytest.fixture
def started() -> Iterator[list[ServerProcess]]:
    servers: list[ServerProcess] = []
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


def start(started: list[ServerProcess], config: dict[str, Any], workdir: Path, *args: str) -> ServerProcess:
    server = ServerProcess(config, workdir)
    server.args = [*server.args, *args]
    started.append(server)
    return server.start()


def scrape(server: ServerProcess) -> Samples:
    import urllib.request

    m = METRICS_LINE.search(server.output)
    assert m, server.output
    with urllib.request.urlopen(m.group(1), timeout=10) as resp:
        text = resp.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[s.name, tuple(sorted(s.labels.items()))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    assert key in samples, f"{key} not exposed; have {sorted(k for k in samples if k[0] == name)}"
    return samples[key]


def rpc_labels(method: str, service: str = SERVICE, kind: str = "unary") -> dict[str, str]:
    return {"grpc_service": service, "grpc_method": method, "grpc_type": kind}


# -- metrics --------------------------------------------------------------------------


def test_every_family_a_prometheus_user_expects(started: list[ServerProcess], tmp_path: Path, layout: Layout) -> None:
    config = with_metrics(base_config(layout.root))
    config["storage"]["cache"]["blobdescriptorsize"] = 20
    server = start(started, config, tmp_path)
    before = scrape(server)
    assert value(before, "grpc_server_started_total", **rpc_labels("Stat")) == 0
    with DescriptorClient(server.target) as client:
        assert (client.metrics().worker, client.metrics().workers) == (0, 1)  # the whole server
    assert value(before, "registry_storage_cache_capacity", cache="inmemory") == 20
    assert value(before, "registry_storage_cache_entries", cache="inmemory") == 0

    blobs = [layout.put_blob(f"layer {i}".encode()) for i in range(30)]
    with DescriptorClient(server.target) as client:
        for blob in blobs:
            client.stat(blob)  # 30 misses filled from the backend: 10 evictions at capacity 20
        client.stat(blobs[-1])  # a hit
        with pytest.raises(BlobUnknownError):
            client.stat(A256)
        with pytest.raises(InvalidArgumentError):
            client.stat("sha256:nope")
    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5).status == 1
        with pytest.raises(grpc.RpcError) as unknown:
            health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        assert replies
        with pytest.raises(grpc.RpcError) as unimplemented:
            channel.unary_unary("/no.such.Service/Call")(b"", timeout=5)
        assert unimplemented.value.code() == grpc.StatusCode.UNIMPLEMENTED

    after = scrape(server)
    # Process and Python collectors, on the server's own registry.
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"):
        assert value(after, name) > 0
    assert any(name == "python_info" for name, _ in after)
    assert any(name == "python_gc_collections_total" for name, _ in after)
    # The in-memory cache's state, read at scrape time.
    assert value(after, "registry_storage_cache_entries", cache="inmemory") == 20
    assert value(after, "registry_storage_cache_evictions_total", cache="inmemory") == 10
    # distribution 3.x names and distribution 2.8's labelled counter, the same counts.
    assert value(after, "registry_storage_cache_requests_total") == 32
    assert value(after, "registry_storage_cache_total", type="Request") == 32
    assert value(after, "registry_storage_cache_total", type="Hit") == value(after, "registry_storage_cache_hits_total")
    assert value(after, "registry_storage_cache_total", type="Miss") == 31
    assert value(after, "registry_storage_cache_total", type="Error") == 0
    # The backend histogram, by backend, operation and outcome.
    backend = "registry_storage_backend_request_duration_seconds_count"
    assert value(after, backend, backend="filesystem", operation="stat", outcome="ok") == 30
    assert value(after, backend, backend="filesystem", operation="stat", outcome="unknown") == 1
    assert value(after, backend, backend="filesystem", operation="stat", outcome="error") == 0
    # Started, handled and handling, for the service and for health and reflection.
    stat = rpc_labels("Stat")
    assert value(after, "grpc_server_started_total", **stat) == 33
    assert value(after, "grpc_server_handled_total", **stat, grpc_code="OK") == 31
    assert value(after, "grpc_server_handled_total", **stat, grpc_code="INVALID_ARGUMENT") == 1
    check = rpc_labels("Check", HEALTH)
    assert value(after, "grpc_server_started_total", **check) == 2
    assert value(after, "grpc_server_handled_total", **check, grpc_code="OK") == 1
    assert value(after, "grpc_server_handled_total", **check, grpc_code="NOT_FOUND") == 1
    assert value(after, "grpc_server_handling_seconds_count", **check) == 2
    info = rpc_labels("ServerReflectionInfo", "grpc.reflection.v1alpha.ServerReflection", "bidi_stream")
    assert value(after, "grpc_server_started_total", **info) == 1
    assert value(after, "grpc_server_handled_total", **info, grpc_code="OK") == 1
    # A method the server does not have creates no series.
    assert not [k for k in after if ("grpc_service", "no.such.Service") in k[1]]


def test_metrics_are_the_totals_of_all_workers(started: list[ServerProcess], tmp_path: Path, layout: Layout) -> None:
    blob = layout.put_blob(b"served by some worker")
    server = start(started, with_metrics(base_config(layout.root, delete=False)), tmp_path, "--workers", "2")
    wait_for(lambda: server.output.count("listening on") == 2)
    wait_for(lambda: value(scrape(server), "descriptor_workers_reporting") == 2)
    served_by: set[int] = set()
    for _ in range(40):  # one connection each: the kernel spreads them over both workers
        with DescriptorClient(server.target) as client:
            client.stat(blob)
    with DescriptorClient(server.target) as client:
        own = client.metrics()  # one worker's counters, and it says so
    assert own.workers == 2
    assert own.worker in (0, 1)
    assert own.requests < 40
    total = scrape(server)
    assert value(total, "descriptor_workers") == 2
    assert value(total, "registry_storage_cache_requests_total") == 40
    assert value(total, "grpc_server_handled_total", **rpc_labels("Stat"), grpc_code="OK") == 40
    assert value(total, "grpc_server_started_total", **rpc_labels("Stat")) == 40
    assert value(total, "grpc_server_handled_total", **rpc_labels("GetMetrics"), grpc_code="OK") == 1
    assert value(total, "grpc_server_handling_seconds_count", **rpc_labels("Stat")) == 40
    # Each worker filled its own in-memory cache: the entries add up.
    misses = value(total, "registry_storage_cache_misses_total")
    assert value(total, "registry_storage_cache_entries", cache="inmemory") == misses
    # Per-process series stay per worker.
    for index in ("0", "1"):
        assert value(total, "process_resident_memory_bytes", worker=index) > 0
        served_by.add(int(index))
    assert served_by == {0, 1}


# -- logs -----------------------------------------------------------------------------


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def test_json_lines_carry_time_worker_fields_reason_peer_and_principal(
    started: list[ServerProcess], tmp_path: Path, layout: Layout
) -> None:
    config = base_config(layout.root)
    config["log"] = {"level": "debug", "formatter": "json", "fields": {"service": "descriptor", "zone": "eu-1"}}
    config["auth"] = {"tokens": [{"name": "puller", "scope": "read", "sha256": token_hash("read-token-1")}]}
    server = start(started, config, tmp_path)
    blob = layout.push(REPO, b"logged")
    with DescriptorClient(server.target, token="read-token-1") as client:
        client.stat(blob, REPO)
        with pytest.raises(BlobUnknownError):
            client.stat(A256)
    with DescriptorClient(server.target, token="not-a-token") as client, pytest.raises(UnauthenticatedError):
        client.stat(blob)
    server.stop()
    records = [json.loads(line) for line in server.lines if line.startswith("{")]
    assert records
    for record in records:
        assert RFC3339_MS.match(record["time"]), record["time"]
        assert record["worker"] == 0
        assert (record["service"], record["zone"]) == ("descriptor", "eu-1")
    first = datetime.datetime.fromisoformat(records[0]["time"].replace("Z", "+00:00"))
    assert abs((datetime.datetime.now(datetime.UTC) - first).total_seconds()) < 300
    calls = [r for r in records if r["logger"] == "descriptor_server.calls"]
    ok = next(c for c in calls if c["status"] == "OK")
    assert ok["principal"] == "puller"
    assert re.match(r"^ipv4:127\.0\.0\.1:\d+$", ok["peer"]), ok["peer"]
    assert "reason" not in ok
    missing = next(c for c in calls if c["status"] == "NOT_FOUND")
    assert (missing["reason"], missing["principal"]) == ("BLOB_UNKNOWN", "puller")
    refused = next(c for c in calls if c["status"] == "UNAUTHENTICATED")
    assert refused["reason"] == "UNAUTHENTICATED"
    assert "principal" not in refused
    assert "read-token-1" not in server.output
    assert "not-a-token" not in server.output


def test_a_line_when_the_backend_answers_again(started: list[ServerProcess], tmp_path: Path) -> None:
    root = tmp_path / "registry"
    root.symlink_to(root)  # a symbolic-link loop: every read fails with ELOOP

    config = base_config(root)
    config["grpc"]["healthprobeinterval"] = "100ms"
    server = start(started, with_metrics(config), tmp_path)
    with DescriptorClient(server.target) as client:
        for _ in range(3):
            with pytest.raises(BackendUnavailableError):
                client.stat(A256)
        root.unlink()
        blob = Layout(root).put_blob(b"back again")
        assert client.stat(blob).size == len(b"back again")
        client.stat(blob)  # a hit: the backend is not asked
    wait_for(lambda: "backend probe passes again" in server.output)
    lines = [line for line in server.lines if "is back after failing" in line]
    assert len(lines) == 1, lines
    assert re.search(r"backend filesystem is back after failing for [\d.]+s \(3 failed calls\)", lines[0]), lines
    samples = scrape(server)
    backend = "registry_storage_backend_request_duration_seconds_count"
    assert value(samples, backend, backend="filesystem", operation="stat", outcome="error") == 3
    assert value(samples, backend, backend="filesystem", operation="stat", outcome="ok") == 1
    shutil.rmtree(root)


def test_text_lines_carry_rfc3339_and_fields(started: list[ServerProcess], tmp_path: Path, layout: Layout) -> None:
    config = base_config(layout.root)
    config["log"] = {"fields": {"environment": "0123"}}
    server = start(started, config, tmp_path)
    server.stop()
    line = next(line for line in server.lines if "listening on" in line)
    stamp = line.split(" ", 1)[0]
    assert RFC3339_MS.match(stamp), line
    assert line.rstrip().endswith('environment="0123"'), line


@pytest.mark.redis
def test_redis_up_gauge_and_a_line_when_the_cache_answers_again(
    started: list[ServerProcess], tmp_path: Path, layout: Layout, redis_own: Any
) -> None:
    blob = layout.put_blob(b"cached in redis")
    config = with_metrics(base_config(layout.root, cache="redis"))
    config["redis"] = {"addrs": [redis_own.addr], "dialtimeout": "200ms"}
    server = start(started, config, tmp_path)
    with DescriptorClient(server.target) as client:
        client.stat(blob)
        assert value(scrape(server), "registry_storage_cache_redis_up") == 1
        redis_own.stop()
        for _ in range(2):  # answered by the backend while Redis is down
            assert client.stat(blob).size == len(b"cached in redis")
        down = scrape(server)
        assert value(down, "registry_storage_cache_redis_up") == 0
        assert value(down, "registry_storage_cache_errors_total") == 2
        redis_own.restart()

        def answered() -> bool:
            client.stat(blob)
            return "redis cache is back after failing" in server.output

        try:
            wait_for(answered, timeout=20, interval=0.2)
        except TimeoutError:
            raise AssertionError(server.output) from None
        assert value(scrape(server), "registry_storage_cache_redis_up") == 1
    (line,) = [line for line in server.lines if "is back after failing" in line]
    assert re.search(r"redis cache is back after failing for [\d.]+s \(\d+ failed calls\)", line), line
