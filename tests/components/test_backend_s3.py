"""The ``s3`` backend against moto's stand-alone S3 server (a real HTTP peer).

The layout tests (test_backend_layout.py) and the conformance suite
(target_server_s3) also run through this backend; this file covers what is S3's own:
the key prefix, addressing styles, errors, and the config keys.
"""

from __future__ import annotations

import http.client
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from descriptor_client import BackendUnavailableError, BlobUnknownError, Descriptor, DescriptorClient
from helpers.backend_support import S3_ENV, MotoServer, S3Layout, health_of, s3_storage
from helpers.support import OCT, REPO, ServerProcess, digest_of, refused_port, running_server
from helpers.targets_backends import server_config


def test_rootdirectory_is_the_key_prefix(tmp_path: Path, moto_server: MotoServer, s3_bucket: tuple[Any, str]) -> None:
    s3, bucket = s3_bucket
    inside = S3Layout(s3, bucket, "registry")
    outside = S3Layout(s3, bucket, "")
    digest_in = inside.put_blob(b"under the root")
    digest_out = outside.put_blob(b"at the bucket top")
    # distribution's s3 driver trims the slashes around rootdirectory.
    config = server_config({"s3": s3_storage(moto_server.endpoint, bucket, "/registry/")})
    with running_server(config, tmp_path, env=S3_ENV) as server, DescriptorClient(server.target) as client:
        assert health_of(server.target) == "SERVING"
        assert client.stat(digest_in) == Descriptor(OCT, digest_in, len(b"under the root"))
        with pytest.raises(BlobUnknownError):
            client.stat(digest_out)


def test_unreachable_endpoint_is_backend_unavailable(tmp_path: Path) -> None:
    with (
        refused_port() as port,
        running_server(
            server_config({"s3": s3_storage(f"http://127.0.0.1:{port}", "registry")}), tmp_path, env=S3_ENV
        ) as server,
        DescriptorClient(server.target) as client,
    ):
        assert health_of(server.target) == "NOT_SERVING"
        digest = digest_of(b"x")
        for repository in ("", REPO):
            with pytest.raises(BackendUnavailableError):
                client.stat(digest, repository)
        with pytest.raises(BackendUnavailableError):
            client.clear(digest, REPO)


def test_missing_bucket_is_backend_unavailable_not_unknown(tmp_path: Path, moto_server: MotoServer) -> None:
    config = server_config({"s3": s3_storage(moto_server.endpoint, "no-such-bucket")})
    config["grpc"]["healthprobeinterval"] = "1h"
    with running_server(config, tmp_path, env=S3_ENV) as server, DescriptorClient(server.target) as client:
        assert health_of(server.target) == "NOT_SERVING"
        with pytest.raises(BackendUnavailableError):
            client.stat(digest_of(b"x"))
        with pytest.raises(BackendUnavailableError):
            client.stat(digest_of(b"x"), REPO)


def test_corrupt_link_is_backend_unavailable(
    tmp_path: Path, moto_server: MotoServer, s3_bucket: tuple[Any, str]
) -> None:
    s3, bucket = s3_bucket
    layout = S3Layout(s3, bucket)
    digest = layout.put_blob(b"blob")
    layout.put_link(REPO, digest, target="not a digest")
    config = server_config({"s3": s3_storage(moto_server.endpoint, bucket)})
    with running_server(config, tmp_path, env=S3_ENV) as server, DescriptorClient(server.target) as client:
        with pytest.raises(BackendUnavailableError):
            client.stat(digest, REPO)
        assert client.stat(digest).size == 4


class ForwardProxy:
    """A plain HTTP forward proxy on loopback that sends every request to one upstream
    port and records the Host each request was addressed to (as a corporate proxy would
    see it). It lets virtual-host addressing (``<bucket>.localhost``) reach moto
    without any DNS name for the bucket."""

    def __init__(self, upstream_port: int) -> None:
        self.hosts: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                url = urlsplit(self.path)
                proxy.hosts.append(url.netloc)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("proxy-connection", "connection")}
                headers["Host"] = url.netloc
                conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=10)
                try:
                    path = url.path + (f"?{url.query}" if url.query else "")
                    conn.request(self.command, path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                self.send_response(resp.status)
                for key, value in resp.getheaders():
                    if key.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(key, value)
                # A HEAD answer carries the length of the body a GET would have had.
                length_header = resp.getheader("Content-Length", "0") if self.command == "HEAD" else len(data)
                self.send_header("Content-Length", str(length_header))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_HEAD = do_PUT = do_DELETE = do_POST = _forward

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)  # bound here: no race
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def forward_proxy(moto_server: MotoServer) -> Iterator[ForwardProxy]:
    proxy = ForwardProxy(moto_server.port)
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.mark.parametrize(
    ("forcepathstyle", "host_of"), [(True, "localhost:{port}"), (False, "{bucket}.localhost:{port}")]
)
def test_addressing_style(
    tmp_path: Path,
    moto_server: MotoServer,
    s3_bucket: tuple[Any, str],
    forward_proxy: ForwardProxy,
    *,
    forcepathstyle: bool,
    host_of: str,
) -> None:
    s3, bucket = s3_bucket
    digest = S3Layout(s3, bucket).put_blob(b"addressed")
    storage = {**s3_storage(f"http://localhost:{moto_server.port}", bucket), "forcepathstyle": forcepathstyle}
    proxy = f"http://127.0.0.1:{forward_proxy.port}"
    env = {**S3_ENV, "HTTP_PROXY": proxy, "http_proxy": proxy, "NO_PROXY": "", "no_proxy": ""}
    with (
        running_server(server_config({"s3": storage}), tmp_path, env=env) as server,
        DescriptorClient(server.target) as client,
    ):
        assert client.stat(digest).size == len(b"addressed")
    assert host_of.format(bucket=bucket, port=moto_server.port) in forward_proxy.hosts


def _check_config(tmp_path: Path, storage: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "check.yml"
    path.write_text(yaml.safe_dump({"storage": storage}))
    return subprocess.run(
        [sys.executable, "-m", "descriptor_server", "--check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_config_masks_the_secret_key(tmp_path: Path) -> None:
    result = _check_config(tmp_path, {"s3": s3_storage("http://127.0.0.1:9000", "registry")})
    assert result.returncode == 0, result.stderr
    shown = yaml.safe_load(result.stdout)["storage"]["s3"]
    assert shown["secretkey"] == "*****"
    assert shown["bucket"] == "registry"
    assert shown["forcepathstyle"] is True


@pytest.mark.parametrize(
    ("storage", "key"),
    [
        ({"s3": {"region": "us-east-1"}}, "storage.s3.bucket"),
        ({"s3": {"bucket": "b", "forcepathstyle": "yes"}}, "storage.s3.forcepathstyle"),
        ({"s3": {"bucket": "b", "accesskey": "only-the-access-key"}}, "storage.s3"),
    ],
)
def test_bad_s3_config_is_refused_naming_the_key(tmp_path: Path, storage: dict[str, Any], key: str) -> None:
    proc = ServerProcess(server_config(storage), tmp_path, env=S3_ENV)
    proc.proc = subprocess.Popen(
        [sys.executable, "-m", "descriptor_server", "--config", str(proc.config_path)],
        cwd=tmp_path,
        env=proc.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out, _ = proc.proc.communicate(timeout=60)
    assert proc.proc.returncode == 2, out
    assert f"{key}:" in out
