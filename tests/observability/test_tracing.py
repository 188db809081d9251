"""Traces (issue 16, item 4): OpenTelemetry spans exported over OTLP/gRPC to a receiver.

The receiver is a real grpc server implementing
``opentelemetry.proto.collector.trace.v1.TraceService`` on loopback; the server under
test is the real ``descriptor-server`` configured only by the standard ``OTEL_*``
variables. The callers are the Python client (inside a span of the test's own
OpenTelemetry SDK) and a Node.js grpc-js client sending ``traceparent``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from descriptor_client import BlobUnknownError, DescriptorClient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers.support import A256, Layout, ServerProcess, base_config, run_server_command, wait_for
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
SERVICE = "descriptor.v1.BlobDescriptorService"


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    """Keeps every span exported to it, with its resource's attributes."""

    def __init__(self) -> None:
        self.spans: list[tuple[dict[str, Any], Any]] = []
        self.lock = threading.Lock()

    def Export(self, request: Any, context: Any) -> Any:
        with self.lock:
            for resource_spans in request.resource_spans:
                resource = attributes(resource_spans.resource.attributes)
                for scope in resource_spans.scope_spans:
                    self.spans.extend((resource, span) for span in scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def named(self, name: str) -> list[Any]:
        with self.lock:
            return [span for _, span in self.spans if span.name == name]


def attributes(kvs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in kvs:
        which = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, which) if which else None
    return out


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, int]]:
    servicer = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, port
    finally:
        server.stop(0)


def otel_env(port: int, **extra: str) -> dict[str, str]:
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        **extra,
    }


def test_every_hit_has_its_cache_span_memoised_or_not(
    receiver: tuple[Receiver, int], tmp_path: Path, layout: Layout
) -> None:
    """The in-memory cache answers a memoised hit without a coroutine only where no span
    is lost: with tracing on, every Stat still has its cache.stat child."""
    spans, port = receiver
    blob = layout.put_blob(b"hit again and again")
    server = ServerProcess(base_config(layout.root), tmp_path, env=otel_env(port)).start()
    try:
        with DescriptorClient(server.target) as client:
            for _ in range(6):  # a miss, then hits: memoised from the third
                client.stat(blob)
        # A child ends before its parent, so is exported with it or before it.
        wait_for(lambda: len(spans.named(f"{SERVICE}/Stat")) == 6)
    finally:
        server.stop()
    stats = sorted(s.span_id for s in spans.named(f"{SERVICE}/Stat"))
    assert sorted(s.parent_span_id for s in spans.named("cache.stat") if s.parent_span_id in stats) == stats


def test_spans_for_every_rpc_with_cache_and_backend_children(
    receiver: tuple[Receiver, int], tmp_path: Path, layout: Layout
) -> None:
    spans, port = receiver
    blob = layout.put_blob(b"traced layer")
    server = ServerProcess(base_config(layout.root), tmp_path, env=otel_env(port)).start()
    try:
        caller = TracerProvider().get_tracer("test")
        with caller.start_as_current_span("registry request") as parent, DescriptorClient(server.target) as client:
            client.stat(blob)  # a miss: cache, then backend
            with pytest.raises(BlobUnknownError):
                client.stat(A256)
        with grpc.insecure_channel(server.target) as channel:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5)
        wait_for(lambda: len(spans.named(f"{SERVICE}/Stat")) == 2 and spans.named("grpc.health.v1.Health/Check"))
    finally:
        server.stop()

    trace_id = parent.get_span_context().trace_id.to_bytes(16, "big")
    parent_id = parent.get_span_context().span_id.to_bytes(8, "big")
    stats = spans.named(f"{SERVICE}/Stat")
    by_code = {attributes(s.attributes)["rpc.grpc.status_code"]: s for s in stats}
    assert set(by_code) == {0, 5}  # OK and NOT_FOUND
    ok = by_code[0]
    assert ok.trace_id == trace_id  # the caller's trace, carried by the Python client
    assert ok.parent_span_id == parent_id
    assert ok.kind == ok.SPAN_KIND_SERVER
    assert attributes(ok.attributes) == {
        "rpc.system": "grpc",
        "rpc.service": SERVICE,
        "rpc.method": "Stat",
        "rpc.grpc.status_code": 0,
    }
    children = [s for s in (spans.named("cache.stat") + spans.named("backend.stat")) if s.parent_span_id == ok.span_id]
    assert sorted(s.name for s in children) == ["backend.stat", "cache.stat"]
    for child in children:
        assert child.trace_id == trace_id
        assert attributes(child.attributes)["descriptor.digest"] == blob
    backend = next(s for s in children if s.name == "backend.stat")
    assert attributes(backend.attributes)["descriptor.backend"] == "filesystem"
    assert attributes(backend.attributes)["descriptor.outcome"] == "ok"
    unknown = [s for s in spans.named("backend.stat") if s.parent_span_id == by_code[5].span_id]
    assert attributes(unknown[0].attributes)["descriptor.outcome"] == "BLOB_UNKNOWN"
    health = spans.named("grpc.health.v1.Health/Check")[0]
    assert attributes(health.attributes)["rpc.service"] == "grpc.health.v1.Health"
    assert health.trace_id != trace_id  # no context sent: a trace of its own
    resource = next(r for r, s in spans.spans if s is ok)
    assert resource["service.name"] == "descriptor-server"


def test_no_spans_unless_an_exporter_is_set(receiver: tuple[Receiver, int], tmp_path: Path, layout: Layout) -> None:
    spans, port = receiver
    blob = layout.put_blob(b"untraced")
    env = otel_env(port)
    del env["OTEL_TRACES_EXPORTER"]
    server = ServerProcess(base_config(layout.root), tmp_path, env=env).start()
    try:
        with DescriptorClient(server.target) as client:
            client.stat(blob)
        time.sleep(0.5)  # several export intervals
    finally:
        server.stop()
    assert spans.spans == []
    assert "tracing on" not in server.output


def test_a_bad_exporter_is_a_config_error(tmp_path: Path, layout: Layout) -> None:
    config = tmp_path / "c.yml"
    config.write_text(yaml.safe_dump(base_config(layout.root)))
    done = run_server_command(["--config", str(config)], env={**os.environ, "OTEL_TRACES_EXPORTER": "jaeger"})
    assert done.returncode == 2
    assert "OTEL_TRACES_EXPORTER" in done.stderr


def test_node_caller_trace_context_is_kept(receiver: tuple[Receiver, int], tmp_path: Path, layout: Layout) -> None:
    if shutil.which("node") is None or not (NODE_DIR / "node_modules").is_dir():
        pytest.skip("node or tests/node/node_modules missing (./dev test installs them)")
    spans, port = receiver
    blob = layout.put_blob(b"traced from node")
    trace_hex, parent_hex = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    server = ServerProcess(base_config(layout.root), tmp_path, env=otel_env(port, OTEL_SERVICE_NAME="blobs")).start()
    try:
        out = subprocess.run(
            ["node", "traced.mjs", server.target, blob, f"00-{trace_hex}-{parent_hex}-01"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert out.stdout.strip() == "OK"
        wait_for(lambda: spans.named(f"{SERVICE}/Stat"))
    finally:
        server.stop()
    (stat,) = spans.named(f"{SERVICE}/Stat")
    assert stat.trace_id.hex() == trace_hex
    assert stat.parent_span_id.hex() == parent_hex
    resource = next(r for r, s in spans.spans if s is stat)
    assert resource["service.name"] == "blobs"


def test_a_registry_head_and_the_service_stat_it_makes_are_one_trace(
    receiver: tuple[Receiver, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """distribution v3.1.1's registry with this service as its cache (registry-descriptor),
    both exporting to one receiver: a HEAD carrying a caller's traceparent is traced by the
    registry, and the Stat the Go client makes for it is a span of that trace, its parent a
    span of the registry's."""
    from helpers.backend_support import REGISTRY_DESCRIPTOR, RegistryProcess, push_blob

    if not REGISTRY_DESCRIPTOR.available():  # a failure in CI (conftest)
        pytest.skip(f"{REGISTRY_DESCRIPTOR.binary} is not built (./dev test builds it from registry-go/)")
    spans, port = receiver
    root = tmp_path / "service-root"
    root.mkdir()
    service = ServerProcess(base_config(root), tmp_path, env=otel_env(port)).start()
    for name, value in otel_env(port, OTEL_EXPORTER_OTLP_PROTOCOL="grpc", OTEL_SERVICE_NAME="registry").items():
        monkeypatch.setenv(name, value)  # the registry's environment (distribution's autoexport)
    options = {"target": service.target, "timeout": "5s"}
    middleware = {"middleware": {"repository": [{"name": "descriptorcache", "options": options}]}}
    registry = RegistryProcess(tmp_path / "registry", release=REGISTRY_DESCRIPTOR, extra=middleware)
    try:
        digest = push_blob(registry.url, "traced/app", b"a layer behind a traced registry")
        trace_id, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
        resp = httpx.head(
            f"{registry.url}/v2/traced/app/blobs/{digest}",
            headers={"traceparent": f"00-{trace_id}-{caller_span}-01"},
            timeout=10,
        )
        assert resp.status_code == 200
        want = bytes.fromhex(trace_id)

        def service_stat() -> list[Any]:
            return [s for s in spans.named(f"{SERVICE}/Stat") if s.trace_id == want]

        def registry_spans() -> dict[bytes, Any]:
            in_trace = [(res, s) for res, s in list(spans.spans) if s.trace_id == want]
            return {s.span_id: s for res, s in in_trace if res.get("service.name") == "registry"}

        def exported() -> bool:
            # Both processes export in batches on their own schedules (distribution's batch
            # processor every few seconds): wait until the service's Stat span AND the
            # registry span it names as parent have both arrived, not just the first of them.
            # The registry's HEAD span ends (and is exported) after the spans inside it.
            stats, theirs = service_stat(), registry_spans()
            head = any(s.parent_span_id == bytes.fromhex(caller_span) for s in theirs.values())
            return bool(stats) and head and all(s.parent_span_id in theirs for s in stats)

        wait_for(exported, timeout=60)
    finally:
        registry.stop()
        service.stop()
    theirs = registry_spans()
    assert theirs, "the registry exported no span of the caller's trace"
    (stat,) = service_stat()
    assert stat.parent_span_id in theirs  # the Go client sent the registry's span as parent
    head = [s for s in theirs.values() if s.parent_span_id == bytes.fromhex(caller_span)]
    assert head, "the registry's HEAD span is not the caller's child"
