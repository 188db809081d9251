"""Operations (issue 5): Prometheus metrics, health, reflection, call logs, --check-config.

Every test runs the real server command and talks to it as an operator's tools do:
an HTTP scrape of the metrics endpoint, grpc.health.v1 checks, a reflection client.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import signal
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from descriptor_client import (
    BlobUnknownError,
    Descriptor,
    DescriptorClient,
    InvalidArgumentError,
    ServerDrainingError,
)
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from helpers.fifo_support import make_fifo, release
from helpers.support import (
    A256,
    OCT,
    REPO,
    Layout,
    ServerProcess,
    base_config,
    refused_port,
    run_server_command,
    wait_for,
)
from prometheus_client.parser import text_string_to_metric_families

SERVICE = "descriptor.v1.BlobDescriptorService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
METRICS_LINE = re.compile(r"metrics endpoint at (http://\S+)")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def with_metrics(config: dict[str, Any]) -> dict[str, Any]:
    config["http"] = {"debug": {"addr": "127.0.0.1:0", "prometheus": {"enabled": True, "path": "/metrics"}}}
    return config


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[ServerProcess]]:
    """Servers a test starts, stopped afterwards whatever happens."""
    servers: list[ServerProcess] = []
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


def start(started: list[ServerProcess], config: dict[str, Any], workdir: Path) -> ServerProcess:
    server = ServerProcess(config, workdir)
    started.append(server)
    return server.start()


def metrics_url(server: ServerProcess) -> str:
    m = METRICS_LINE.search(server.output)
    assert m, server.output
    return m.group(1)


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[s.name, tuple(sorted(s.labels.items()))] = s.value
    return samples


def rpc(samples: Samples, name: str, method: str, **labels: str) -> float:
    key = (
        name,
        tuple(sorted({"grpc_service": SERVICE, "grpc_method": method, "grpc_type": "unary", **labels}.items())),
    )
    assert key in samples, f"{key} not exposed"
    return samples[key]


def health_status(target: str, service: str) -> int:
    with grpc.insecure_channel(target) as channel:
        resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        status: int = resp.status
        return status


# -- metrics --------------------------------------------------------------------------


def test_metrics_count_known_traffic_exactly(started: list[ServerProcess], tmp_path: Path, layout: Layout) -> None:
    server = start(started, with_metrics(base_config(layout.root)), tmp_path)
    url = metrics_url(server)

    before = scrape(url)
    for name in ("requests", "hits", "misses", "errors"):
        assert before[f"registry_storage_cache_{name}_total", ()] == 0
    assert rpc(before, "grpc_server_handled_total", "Stat", grpc_code="OK") == 0
    assert rpc(before, "grpc_server_handled_total", "Stat", grpc_code="NOT_FOUND") == 0

    blob = layout.push(REPO, b"some layer")
    other = layout.put_blob(b"another layer")
    with DescriptorClient(server.target) as client:
        client.stat(blob)  # miss, filled from the backend
        client.stat(blob)  # hit
        with pytest.raises(BlobUnknownError):
            client.stat(A256)  # miss, unknown
        with pytest.raises(InvalidArgumentError):
            client.stat("sha256:not-hex")  # refused before any lookup
        results = client.batch_stat([blob, A256, "nope"])  # hit, miss, invalid item
        client.set_descriptor(other, Descriptor(OCT, other, 13))
        m = client.metrics()
    assert isinstance(results[0], Descriptor)

    after = scrape(url)
    assert after["registry_storage_cache_requests_total", ()] == 5
    assert after["registry_storage_cache_hits_total", ()] == 2
    assert after["registry_storage_cache_misses_total", ()] == 3
    assert after["registry_storage_cache_errors_total", ()] == 0
    assert (m.requests, m.hits, m.misses, m.errors) == (5, 2, 3, 0)

    handled = "grpc_server_handled_total"
    assert rpc(after, handled, "Stat", grpc_code="OK") == 2
    assert rpc(after, handled, "Stat", grpc_code="NOT_FOUND") == 1
    assert rpc(after, handled, "Stat", grpc_code="INVALID_ARGUMENT") == 1
    assert rpc(after, handled, "BatchStat", grpc_code="OK") == 1
    assert rpc(after, handled, "SetDescriptor", grpc_code="OK") == 1
    assert rpc(after, handled, "GetMetrics", grpc_code="OK") == 1
    assert rpc(after, handled, "Clear", grpc_code="OK") == 0

    hist = "grpc_server_handling_seconds"
    assert rpc(after, f"{hist}_count", "Stat") == 4
    assert rpc(after, f"{hist}_count", "BatchStat") == 1
    assert rpc(after, f"{hist}_bucket", "Stat", le="+Inf") == 4
    # Sub-millisecond buckets exist, and cumulative counts never decrease.
    bounds = sorted(
        (float(dict(labels)["le"]), value)
        for (name, labels), value in after.items()
        if name == f"{hist}_bucket" and dict(labels)["grpc_method"] == "Stat"
    )
    assert [b for b, _ in bounds if b < 0.001] == [0.00005, 0.0001, 0.00025, 0.0005]
    assert all(a[1] <= b[1] for a, b in itertools.pairwise(bounds))


def test_metrics_endpoint_serves_only_its_path(started: list[ServerProcess], tmp_path: Path, layout: Layout) -> None:
    config = with_metrics(base_config(layout.root))
    config["http"]["debug"]["prometheus"]["path"] = "/debug/metrics"
    server = start(started, config, tmp_path)
    url = metrics_url(server)
    assert url.endswith("/debug/metrics")
    assert ("registry_storage_cache_requests_total", ()) in scrape(url)
    for other in ("/", "/metrics", "/debug/metrics/x"):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(url.rsplit("/debug/metrics", 1)[0] + other, timeout=10)
        assert err.value.code == 404


def test_no_metrics_endpoint_unless_enabled(started: list[ServerProcess], tmp_path: Path, layout: Layout) -> None:
    config = base_config(layout.root)
    config["http"] = {"debug": {"addr": "127.0.0.1:0", "prometheus": {"enabled": False}}}
    server = start(started, config, tmp_path)
    assert METRICS_LINE.search(server.output) is None


@pytest.mark.redis
def test_redis_latency_histogram_and_cache_errors(
    started: list[ServerProcess], tmp_path: Path, layout: Layout, redis_standalone: Any
) -> None:
    from helpers.redis_servers import flush

    flush(redis_standalone)
    blob = layout.push(REPO, b"layer in redis")
    config = with_metrics(base_config(layout.root, cache="redis"))
    config["redis"] = {"addrs": [redis_standalone.addr]}
    (tmp_path / "a").mkdir()
    server = start(started, config, tmp_path / "a")
    url = metrics_url(server)
    before = scrape(url)
    for op in ("stat", "set_descriptor", "fill", "clear"):
        assert before["registry_storage_cache_redis_seconds_count", (("operation", op),)] == 0
    with DescriptorClient(server.target) as client:
        client.stat(blob)  # redis miss, backend, written back to redis (fill)
        client.stat(blob)  # redis hit
    after = scrape(url)
    assert after["registry_storage_cache_redis_seconds_count", (("operation", "stat"),)] == 2
    assert after["registry_storage_cache_redis_seconds_count", (("operation", "fill"),)] == 1
    assert after["registry_storage_cache_redis_seconds_count", (("operation", "set_descriptor"),)] == 0
    assert after["registry_storage_cache_hits_total", ()] == 1
    assert after["registry_storage_cache_errors_total", ()] == 0

    # A Redis nobody listens on: every lookup is a cache error answered by the backend.
    with refused_port() as port:
        config["redis"] = {"addrs": [f"127.0.0.1:{port}"], "dialtimeout": "200ms"}
        (tmp_path / "b").mkdir()
        down = start(started, config, tmp_path / "b")
        with DescriptorClient(down.target) as client:
            assert client.stat(blob).size == len(b"layer in redis")
        samples = scrape(metrics_url(down))
    assert samples["registry_storage_cache_requests_total", ()] == 1
    assert samples["registry_storage_cache_errors_total", ()] == 1
    assert samples["registry_storage_cache_misses_total", ()] == 1
    assert samples["registry_storage_cache_hits_total", ()] == 0


# -- health ---------------------------------------------------------------------------


def test_health_not_serving_while_draining(started: list[ServerProcess], tmp_path: Path, layout: Layout) -> None:
    blob = layout.put_blob(b"held in flight")
    fifo = make_fifo(layout.link(REPO, blob))
    config = with_metrics(base_config(layout.root, drain="30s"))
    server = start(started, config, tmp_path)
    url = metrics_url(server)
    assert health_status(server.target, "") == SERVING
    assert health_status(server.target, SERVICE) == SERVING

    outcome: list[object] = []

    def held_call() -> None:
        with DescriptorClient(server.target, timeout=30) as client:
            try:
                outcome.append(client.stat(blob, REPO))
            except Exception as err:
                outcome.append(err)

    caller = threading.Thread(target=held_call, daemon=True)
    caller.start()
    released = False
    try:
        wait_for(lambda: scrape(url)["grpc_server_inflight", (("grpc_service", SERVICE),)] == 1)
        server.signal(signal.SIGTERM)
        wait_for(lambda: health_status(server.target, "") == NOT_SERVING)
        assert health_status(server.target, SERVICE) == NOT_SERVING
        # A client that does not watch health (ours leave a NOT_SERVING replica) is refused.
        no_health = [("grpc.inhibit_health_checking", 1)]
        with DescriptorClient(server.target, options=no_health) as client, pytest.raises(ServerDrainingError):
            client.stat(blob)
        released = release(fifo, blob)
        assert released
        caller.join(30)
        assert outcome == [Descriptor(OCT, blob, len(b"held in flight"))]
        assert server.wait(30) == 0
    finally:
        if not released:
            release(fifo, blob, timeout=1)


def test_health_follows_the_backend_probe(started: list[ServerProcess], tmp_path: Path, layout: Layout) -> None:
    server = start(started, base_config(layout.root, healthprobeinterval="50ms"), tmp_path)
    assert health_status(server.target, SERVICE) == SERVING
    moved = layout.root.with_name("moved-away")
    layout.root.rename(moved)
    try:
        wait_for(lambda: health_status(server.target, SERVICE) == NOT_SERVING)
        assert health_status(server.target, "") == SERVING  # the process itself is alive
    finally:
        moved.rename(layout.root)
    wait_for(lambda: health_status(server.target, SERVICE) == SERVING)
    assert "backend probe failed" in server.output


def test_health_not_serving_from_the_start_without_a_root(started: list[ServerProcess], tmp_path: Path) -> None:
    server = start(started, base_config(tmp_path / "missing", healthprobeinterval="1h"), tmp_path)
    assert health_status(server.target, SERVICE) == NOT_SERVING
    assert health_status(server.target, "") == SERVING


# -- reflection -----------------------------------------------------------------------


def test_reflection_lists_and_describes_the_service(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.target) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        assert {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= set(db.get_services())
        pool = DescriptorPool(db)
        service = pool.FindServiceByName(SERVICE)
        methods = {m.name: (m.input_type.name, m.output_type.name) for m in service.methods}
        assert methods == {
            "Stat": ("StatRequest", "StatResponse"),
            "SetDescriptor": ("SetDescriptorRequest", "SetDescriptorResponse"),
            "Clear": ("ClearRequest", "ClearResponse"),
            "BatchStat": ("BatchStatRequest", "BatchStatResponse"),
            "GetMetrics": ("GetMetricsRequest", "GetMetricsResponse"),
            "Revalidate": ("RevalidateRequest", "RevalidateResponse"),
        }
        stat = pool.FindMessageTypeByName("descriptor.v1.StatRequest")
        assert {f.name: f.number for f in stat.fields} == {"digest": 1, "repository": 2}
        result = pool.FindMessageTypeByName("descriptor.v1.BatchStatResult")
        assert result.fields_by_name["status"].message_type.full_name == "google.rpc.Status"


# -- logs -----------------------------------------------------------------------------


def test_json_call_logs_at_debug(started: list[ServerProcess], tmp_path: Path, layout: Layout) -> None:
    config = base_config(layout.root)
    config["log"] = {"level": "debug", "formatter": "json"}
    server = start(started, config, tmp_path)
    blob = layout.push(REPO, b"logged")
    with DescriptorClient(server.target, token="s3cr3t-token-value") as client:
        client.stat(blob, REPO)
        with pytest.raises(BlobUnknownError):
            client.stat(A256)
    server.stop()
    records = [json.loads(line) for line in server.lines if line.startswith("{")]
    calls = [r for r in records if r["logger"] == "descriptor_server.calls"]
    ok = [c for c in calls if c["status"] == "OK" and c["method"] == "Stat"]
    assert len(ok) == 1
    assert ok[0]["level"] == "debug"
    assert (ok[0]["digest"], ok[0]["repository"]) == (blob, REPO)
    assert isinstance(ok[0]["duration_ms"], float)
    missing = [c for c in calls if c["status"] == "NOT_FOUND"]
    assert len(missing) == 1
    assert missing[0]["level"] == "debug"  # an answer, not a failure
    assert (missing[0]["method"], missing[0]["digest"], missing[0]["repository"]) == ("Stat", A256, "")
    assert "s3cr3t-token-value" not in server.output


def test_text_logs_only_failed_calls_at_info(started: list[ServerProcess], tmp_path: Path, layout: Layout) -> None:
    server = start(started, base_config(layout.root), tmp_path)
    blob = layout.push(REPO, b"quiet")
    with DescriptorClient(server.target) as client:
        client.stat(blob)
        with pytest.raises(BlobUnknownError):  # an answer: not logged at info
            client.stat(A256)
        with pytest.raises(InvalidArgumentError):
            client.stat("sha256:abc\nFORGED level=error", REPO)
    server.stop()
    calls = [line for line in server.lines if "descriptor_server.calls" in line]
    assert len(calls) == 1, calls
    assert 'method="Stat"' in calls[0]
    assert 'status="INVALID_ARGUMENT"' in calls[0]
    assert 'digest="sha256:abc\\nFORGED level=error"' in calls[0]
    assert f'repository="{REPO}"' in calls[0]
    assert not any(line.startswith("FORGED") for line in server.lines)


# -- --check-config -------------------------------------------------------------------


def test_check_config_prints_the_effective_config_with_secrets_masked(tmp_path: Path) -> None:
    token_hash = hashlib.sha256(b"the-token").hexdigest()
    config = {
        "storage": {"filesystem": {"rootdirectory": str(tmp_path)}},
        "redis": {"addrs": ["127.0.0.1:6379"], "password": "hunter2"},
        "auth": {"tokens": [{"name": "gc", "scope": "write", "sha256": token_hash}]},
    }
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(config))
    env = {"DESCRIPTOR_GRPC_MAXBATCH": "7", "PATH": "/usr/bin:/bin"}
    proc = run_server_command(["--check-config", str(path)], env=env)
    assert proc.returncode == 0, proc.stderr
    effective = yaml.safe_load(proc.stdout)
    assert effective["redis"]["password"] == "*****"
    assert effective["auth"]["tokens"][0]["sha256"] == "*****"
    assert effective["auth"]["tokens"][0]["name"] == "gc"
    assert effective["grpc"]["maxbatch"] == 7
    assert effective["grpc"]["healthprobeinterval"] == "10s"  # a default, in Go's notation
    assert effective["storage"]["filesystem"]["rootdirectory"] == str(tmp_path)
    assert "hunter2" not in proc.stdout
    assert token_hash not in proc.stdout

    path.write_text(yaml.safe_dump({"grpc": {"healthprobeinterval": "soon"}}))
    proc = run_server_command(["--check-config", str(path)], env=env)
    assert proc.returncode == 2
    assert "grpc.healthprobeinterval" in proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize(
    ("storage", "key"),
    [
        ({"registry": {"url": "ftp://registry.internal"}}, "storage.registry.url"),
        ({"descriptorservice": {"target": "127.0.0.1:1", "timeout": 0}}, "storage.descriptorservice.timeout"),
        ({"s3": {"bucket": "registry", "accesskey": "AKIA"}}, "storage.s3"),
    ],
)
def test_check_config_refuses_a_backend_section_that_start_refuses(
    tmp_path: Path, storage: dict[str, Any], key: str
) -> None:
    """--check-config runs the backend's own checks too: it never passes what start refuses."""
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump({"storage": storage}))
    proc = run_server_command(["--check-config", str(path)])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"descriptor-server: config error: {key}")
    assert proc.stdout == ""


def test_metrics_address_in_use_is_a_config_error(tmp_path: Path, layout: Layout) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = base_config(layout.root)
        config["http"] = {"debug": {"addr": f"127.0.0.1:{taken.getsockname()[1]}", "prometheus": {"enabled": True}}}
        path = tmp_path / "config.yml"
        path.write_text(yaml.safe_dump(config))
        proc = run_server_command(["--config", str(path)])
    assert proc.returncode == 2
    assert "http.debug.addr" in proc.stderr
    assert "listening on" not in proc.stderr
    assert "Traceback" not in proc.stderr
