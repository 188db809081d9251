"""The real Go tools operators use against the service (docs/go-tools.md).

- ``grpcurl``: reflection lists and describes the service, Stat is called by name
  with JSON, and an error prints its code and its ``google.rpc.ErrorInfo``;
- ``grpc_health_probe``: the Kubernetes exec probe, on the main port (plaintext and
  TLS) and on the plaintext health-only listener ``grpc.healthaddr``;
- ``ghz``: the second load generator of ``./dev bench``, checked here on a bounded run
  that the server's GetMetrics must count hit by hit.

Each tool is the binary ``./dev`` builds with ``go install`` at a pinned version into
``.tools/bin``; a missing one skips (a failure in CI).
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from descriptor_client import Descriptor, DescriptorClient
from helpers.go_tools import ROOT, require_go_tool
from helpers.pki import CA
from helpers.support import OCT, REPO, Layout, ServerProcess, base_config, digest_of, wait_for

SERVICE = "descriptor.v1.BlobDescriptorService"
HEALTH_LINE = r"health-only listener at (\S+):(\d+)"
#: ghz v0.120.0's reflection client does not find the service through the server's
#: reflection (grpcurl does), so ghz reads the repository's proto.
GHZ_PROTO = [
    "--proto",
    str(ROOT / "protos/descriptor/v1/descriptor.proto"),
    "--import-paths",
    f"{ROOT / 'protos'},{ROOT / 'third_party/googleapis'}",
]
#: grpcurl exits with 64 + the gRPC status code of a failed call.
GRPCURL_STATUS_OFFSET = 64


def run(argv: list[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)


@pytest.fixture(scope="module")
def grpcurl() -> str:
    return require_go_tool("grpcurl")


@pytest.fixture(scope="module")
def probe() -> str:
    return require_go_tool("grpc_health_probe")


@pytest.fixture(scope="module")
def ghz() -> str:
    return require_go_tool("ghz")


@pytest.fixture(scope="module")
def pushed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Layout, str, bytes]:
    """A registry root holding one blob linked into ``foo/bar``."""
    layout = Layout(tmp_path_factory.mktemp("registry"))
    content = b"a layer for the Go tools"
    return layout, layout.push(REPO, content), content


@pytest.fixture(scope="module")
def served(pushed: tuple[Layout, str, bytes], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    layout, _, _ = pushed
    proc = ServerProcess(base_config(layout.root), tmp_path_factory.mktemp("server")).start()
    try:
        yield proc
    finally:
        proc.stop()


# -- grpcurl ------------------------------------------------------------------------------


def test_grpcurl_lists_and_describes_through_reflection(grpcurl: str, served: ServerProcess) -> None:
    listed = run([grpcurl, "-plaintext", served.target, "list"])
    assert listed.returncode == 0, listed.stderr
    assert {SERVICE, "grpc.health.v1.Health"} <= set(listed.stdout.split())
    methods = run([grpcurl, "-plaintext", served.target, "list", SERVICE])
    assert methods.returncode == 0, methods.stderr
    assert {f"{SERVICE}.{rpc}" for rpc in ("Stat", "SetDescriptor", "Clear", "BatchStat", "GetMetrics")} <= set(
        methods.stdout.split()
    )
    described = run([grpcurl, "-plaintext", served.target, "describe", "descriptor.v1.StatRequest"])
    assert described.returncode == 0, described.stderr
    assert re.search(r"string digest = 1;", described.stdout)
    assert re.search(r"string repository = 2;", described.stdout)


def test_grpcurl_calls_stat_by_name(grpcurl: str, served: ServerProcess, pushed: tuple[Layout, str, bytes]) -> None:
    _, digest, content = pushed
    body = json.dumps({"digest": digest, "repository": REPO})
    result = run([grpcurl, "-plaintext", "-d", body, served.target, f"{SERVICE}/Stat"])
    assert result.returncode == 0, result.stderr
    # grpcurl prints the proto field names; int64 is a string in proto3 JSON.
    assert json.loads(result.stdout) == {"descriptor": {"media_type": OCT, "digest": digest, "size": str(len(content))}}
    # A write by name, read back by the Python client.
    key = digest_of(b"set through grpcurl")
    body = json.dumps({"digest": key, "descriptor": {"mediaType": "application/json", "digest": key, "size": 7}})
    result = run([grpcurl, "-plaintext", "-d", body, served.target, f"{SERVICE}/SetDescriptor"])
    assert result.returncode == 0, result.stderr
    with DescriptorClient(served.target) as client:
        assert client.stat(key) == Descriptor("application/json", key, 7)
    metrics = run([grpcurl, "-plaintext", served.target, f"{SERVICE}/GetMetrics"])
    assert metrics.returncode == 0, metrics.stderr
    assert int(json.loads(metrics.stdout)["requests"]) >= 2


@pytest.mark.parametrize(
    "case",
    [
        ({"digest": digest_of(b"never pushed"), "repository": REPO}, 5, "NotFound", "BLOB_UNKNOWN"),
        ({"digest": "sha256:" + "Z" * 64}, 3, "InvalidArgument", "DIGEST_INVALID_FORMAT"),
        ({"digest": "sha384:abc"}, 3, "InvalidArgument", "DIGEST_INVALID_LENGTH"),
        ({"digest": "md5:abc"}, 3, "InvalidArgument", "DIGEST_UNSUPPORTED"),
        ({"digest": digest_of(b"x"), "repository": "Foo/Bar"}, 3, "InvalidArgument", "REPOSITORY_NAME_INVALID"),
    ],
    ids=["unknown", "format", "length", "unsupported", "repository"],
)
def test_grpcurl_prints_the_error_info(
    grpcurl: str, served: ServerProcess, case: tuple[dict[str, Any], int, str, str]
) -> None:
    request_body, code, code_name, reason = case
    body = json.dumps(request_body)
    # The default output: code, message and the details decoded through reflection.
    result = run([grpcurl, "-plaintext", "-d", body, served.target, f"{SERVICE}/Stat"])
    assert result.returncode == GRPCURL_STATUS_OFFSET + code, (result.stdout, result.stderr)
    text = result.stdout + result.stderr
    assert f"Code: {code_name}" in text
    assert '"@type": "type.googleapis.com/google.rpc.ErrorInfo"' in text
    assert f'"reason": "{reason}"' in text
    assert '"domain": "descriptor.v1"' in text
    # -format-error: the status as one JSON document, for scripts.
    result = run([grpcurl, "-plaintext", "-format-error", "-d", body, served.target, f"{SERVICE}/Stat"])
    assert result.returncode == GRPCURL_STATUS_OFFSET + code
    status = json.loads(result.stdout or result.stderr)
    assert status["code"] == code
    [info] = [d for d in status["details"] if d["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"]
    assert (info["domain"], info["reason"]) == ("descriptor.v1", reason)


# -- grpc_health_probe ----------------------------------------------------------------------

#: grpc_health_probe's exit statuses.
PROBE_OK, PROBE_CONNECTION_FAILED, PROBE_RPC_FAILED, PROBE_UNHEALTHY = 0, 2, 3, 4


def test_health_probe_on_the_main_port(probe: str, served: ServerProcess) -> None:
    # Liveness: the process; readiness: the service (its backend passes its probe).
    for service in ("", SERVICE):
        result = run([probe, f"-addr={served.target}", f"-service={service}"])
        assert result.returncode == PROBE_OK, result.stderr
        assert "status: SERVING" in result.stdout + result.stderr
    result = run([probe, f"-addr={served.target}", "-service=no.such.Service"])
    assert result.returncode == PROBE_RPC_FAILED, (result.stdout, result.stderr)


def test_health_probe_readiness_fails_while_the_backend_is_down(probe: str, tmp_path: Path) -> None:
    root = tmp_path / "registry"
    root.mkdir()
    proc = ServerProcess(base_config(root, healthprobeinterval="50ms"), tmp_path).start()
    try:
        assert run([probe, f"-addr={proc.target}", f"-service={SERVICE}"]).returncode == PROBE_OK
        root.rmdir()  # the storage goes away: out of rotation, but alive
        wait_for(lambda: run([probe, f"-addr={proc.target}", f"-service={SERVICE}"]).returncode == PROBE_UNHEALTHY)
        assert run([probe, f"-addr={proc.target}"]).returncode == PROBE_OK
        root.mkdir()
        wait_for(lambda: run([probe, f"-addr={proc.target}", f"-service={SERVICE}"]).returncode == PROBE_OK)
    finally:
        proc.stop()
    result = run([probe, f"-addr={proc.target}", "-connect-timeout=500ms"])
    assert result.returncode == PROBE_CONNECTION_FAILED


def test_health_probe_on_healthaddr_beside_mutual_tls(
    probe: str, pushed: tuple[Layout, str, bytes], tmp_path: Path
) -> None:
    layout, _, _ = pushed
    (tmp_path / "pki").mkdir()
    ca = CA(tmp_path / "pki", "probe-ca")
    server_cert = ca.issue("server", ips=("127.0.0.1",))
    client_cert = ca.issue("probe", client=True)
    config = base_config(layout.root, healthaddr="127.0.0.1:0")
    config["grpc"]["tls"] = {
        "certificate": str(server_cert.cert),
        "key": str(server_cert.key),
        "clientcas": [str(ca.pem)],
    }
    proc = ServerProcess(config, tmp_path).start()
    try:
        wait_for(lambda: re.search(HEALTH_LINE, proc.output) is not None)
        m = re.search(HEALTH_LINE, proc.output)
        assert m
        health = f"127.0.0.1:{m.group(2)}"
        # The exec probe as Kubernetes runs it: plaintext, on grpc.healthaddr.
        for service in ("", SERVICE):
            result = run([probe, f"-addr={health}", f"-service={service}"])
            assert result.returncode == PROBE_OK, result.stderr
        # The main port speaks only mutual TLS: a plaintext probe fails, a probe with
        # the CA and a client certificate passes.
        assert run([probe, f"-addr={proc.target}", "-connect-timeout=2s"]).returncode != PROBE_OK
        tls = [f"-tls-ca-cert={ca.pem}", f"-tls-client-cert={client_cert.cert}", f"-tls-client-key={client_cert.key}"]
        result = run([probe, f"-addr={proc.target}", "-tls", *tls, f"-service={SERVICE}"])
        assert result.returncode == PROBE_OK, result.stderr
        without_client_cert = run([probe, f"-addr={proc.target}", "-tls", f"-tls-ca-cert={ca.pem}"])
        assert without_client_cert.returncode != PROBE_OK
    finally:
        proc.stop()


# -- ghz ------------------------------------------------------------------------------------


def test_ghz_drives_stat_hits_that_the_server_counts(
    ghz: str, served: ServerProcess, pushed: tuple[Layout, str, bytes], tmp_path: Path
) -> None:
    _, digest, _ = pushed
    with DescriptorClient(served.target) as client:
        client.stat(digest, REPO)  # cached from now on
        before = client.metrics()
    calls = 300
    report = tmp_path / "ghz.json"
    result = run(
        [
            ghz,
            "--insecure",
            *GHZ_PROTO,
            "--call",
            f"{SERVICE}/Stat",
            "-d",
            json.dumps({"digest": digest, "repository": REPO}),
            "-n",
            str(calls),
            "-c",
            "4",
            "--connections",
            "1",
            "--format",
            "json",
            "-o",
            str(report),
            served.target,
        ],
        timeout=120,
    )
    assert result.returncode == 0, (result.stdout, result.stderr)
    summary = json.loads(report.read_text())
    assert summary["statusCodeDistribution"] == {"OK": calls}
    assert summary["rps"] > 0
    with DescriptorClient(served.target) as client:
        after = client.metrics()
    assert after.hits - before.hits == calls
    assert after.misses == before.misses
