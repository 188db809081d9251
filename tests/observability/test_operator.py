"""What an operator relies on around the service: the HTTP health path, HEAD /metrics."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from descriptor_client import DescriptorClient, UnavailableError
from helpers.pki import CA
from helpers.support import Layout, ServerProcess, base_config, wait_for


def debug_url(server: ServerProcess, what: str) -> str:
    m = re.search(rf"{what} at (http://\S+)", server.output)
    assert m, server.output
    return m.group(1)


def fetch(url: str, method: str = "GET") -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


@pytest.mark.parametrize("metrics", [True, False], ids=["with-metrics", "health-only"])
def test_http_health_follows_the_service(tmp_path: Path, layout: Layout, metrics: bool) -> None:
    """200 SERVING while serving; 503 NOT_SERVING once draining (a load balancer stops
    sending before the port closes)."""
    config = base_config(layout.root, drain="20s")
    config["http"] = {"debug": {"addr": "127.0.0.1:0", "prometheus": {"enabled": metrics}}}
    server = ServerProcess(config, tmp_path).start()
    try:
        url = debug_url(server, "HTTP health")
        assert url.endswith("/healthz")
        assert fetch(url)[:2] == (200, b"SERVING\n")
        status, body, _ = fetch(url, "HEAD")
        assert (status, body) == (200, b"")
        server.signal()  # an idle server drains for 0.5s (the quiet window): look meanwhile
        seen: list[tuple[int, bytes]] = []

        def not_serving() -> bool:
            seen.append(fetch(url)[:2])
            return seen[-1][0] == 503

        wait_for(not_serving, timeout=5, interval=0.01)
        assert seen[-1] == (503, b"NOT_SERVING\n")
        assert server.wait(30) == 0
    finally:
        server.stop()


def test_head_metrics_answers_like_get_without_a_body(tmp_path: Path, layout: Layout) -> None:
    config = base_config(layout.root)
    config["http"] = {"debug": {"addr": "127.0.0.1:0", "prometheus": {"enabled": True}}}
    server = ServerProcess(config, tmp_path).start()
    try:
        url = debug_url(server, "metrics endpoint")
        status, body, headers = fetch(url)
        assert status == 200
        assert b"descriptor_build_info" in body
        status, body, head_headers = fetch(url, "HEAD")
        assert (status, body) == (200, b"")
        assert head_headers["Content-Type"] == headers["Content-Type"]
        assert fetch(url.rsplit("/", 1)[0] + "/nothing")[0] == 404
    finally:
        server.stop()


def test_a_bad_health_path_is_a_config_error(tmp_path: Path, layout: Layout) -> None:
    from helpers.support import run_server_command

    config = base_config(layout.root)
    config["http"] = {"debug": {"addr": "127.0.0.1:0", "healthpath": "healthz"}}
    proc = ServerProcess(config, tmp_path)
    out = run_server_command(["--check-config", str(proc.config_path)], cwd=tmp_path)
    assert out.returncode == 2
    assert "http.debug.healthpath" in out.stderr


def test_json_logs_stay_json_when_grpc_core_logs(tmp_path: Path, layout: Layout) -> None:
    """A failed TLS handshake (a plaintext client, a scanner) makes gRPC's C core write
    a glog line to stderr: in JSON mode it is a JSON line too."""
    ca = CA(tmp_path, "json-logs-ca")
    cert = ca.issue("server", ips=("127.0.0.1",))
    config = base_config(layout.root)
    config["log"] = {"level": "info", "formatter": "json"}
    config["grpc"]["tls"] = {"certificate": str(cert.cert), "key": str(cert.key)}
    server = ServerProcess(config, tmp_path).start()
    try:
        for _ in range(3):  # garbage where a TLS ClientHello should be
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"\x00" * 64)
                with contextlib.suppress(OSError):
                    sock.recv(100)
        # A plaintext gRPC client.
        with grpc.insecure_channel(server.target) as channel, contextlib.suppress(grpc.FutureTimeoutError):
            grpc.channel_ready_future(channel).result(timeout=3)
        wait_for(lambda: "andshake" in server.output, timeout=10)  # the C core said so
    finally:
        server.stop()
    lines = [line for line in server.lines if line.strip()]
    assert lines
    for line in lines:
        assert isinstance(json.loads(line), dict), line
    core = [json.loads(x) for x in lines if '"grpc.core"' in x]
    assert all(c["level"] in ("info", "warning", "error") and c["msg"] for c in core), core


def test_a_plaintext_client_on_a_tls_port_gets_a_hint(tmp_path: Path, layout: Layout) -> None:
    ca = CA(tmp_path, "hint-ca")
    cert = ca.issue("server", ips=("127.0.0.1",))
    config = base_config(layout.root)
    config["grpc"]["tls"] = {"certificate": str(cert.cert), "key": str(cert.key)}
    server = ServerProcess(config, tmp_path).start()
    try:
        with DescriptorClient(server.target, timeout=5) as client, pytest.raises(UnavailableError) as info:
            client.metrics()
        assert "TLS" in info.value.message, info.value.message
        assert "--tls-ca" in info.value.message
        done = subprocess.run(
            [sys.executable, "-m", "descriptor_client", "--target", server.target, "--timeout", "5", "metrics"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 3
        assert "TLS" in done.stderr
    finally:
        server.stop()
