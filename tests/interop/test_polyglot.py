"""A Node.js caller built from protos/ alone, against the real server (issue: polyglot callers).

``tests/node/conformance.mjs`` loads ``protos/`` at run time with ``@grpc/proto-loader``,
calls every RPC, runs the contract's conformance cases and decodes the
``google.rpc.ErrorInfo`` reason from the ``grpc-status-details-bin`` trailer.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers.support import REPO, Layout, ServerProcess, base_config, refused_port

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
SCRIPT = NODE_DIR / "conformance.mjs"
RPCS = ("Stat", "SetDescriptor", "Clear", "BatchStat", "GetMetrics", "Revalidate")
MAX_BATCH = 5
BLOB = b"a layer pushed to the registry\n"
READ_TOKEN = "node-reader-token"
WRITE_TOKEN = "node-writer-token"


def node_or_skip() -> str:
    node = shutil.which("node")
    if node is None or shutil.which("npm") is None:
        pytest.skip("node/npm are not installed (./dev test installs the npm packages when they are)")
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.fail("tests/node/node_modules is missing: run `npm ci` in tests/node (./dev test does)")
    return node


def run_conformance(node: str, target: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [node, str(SCRIPT), target, *args],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@dataclass(frozen=True)
class Servers:
    main: ServerProcess  # deletion enabled, grpc.maxbatch = MAX_BATCH
    nodelete: ServerProcess  # storage.delete.enabled: false
    secured: ServerProcess  # auth.tokens: READ_TOKEN (read), WRITE_TOKEN (write)
    blob: str  # a blob pushed to REPO


def token_entry(name: str, scope: str, token: str) -> dict[str, str]:
    return {"name": name, "scope": scope, "sha256": hashlib.sha256(token.encode()).hexdigest()}


@pytest.fixture
def servers(tmp_path: Path, layout: Layout) -> Iterator[Servers]:
    digest = layout.push(REPO, BLOB)
    secured_config = base_config(layout.root)
    secured_config["auth"] = {
        "tokens": [token_entry("reader", "read", READ_TOKEN), token_entry("writer", "write", WRITE_TOKEN)]
    }
    configs = {
        "main": base_config(layout.root, maxbatch=MAX_BATCH),
        "nodelete": base_config(layout.root, delete=False),
        "secured": secured_config,
    }
    started: dict[str, ServerProcess] = {}
    try:
        for name, config in configs.items():
            (tmp_path / name).mkdir()
            started[name] = ServerProcess(config, tmp_path / name).start()
        yield Servers(**started, blob=digest)
    finally:
        for server in started.values():
            server.stop()


def test_node_client_checks_every_rpc_and_error_reason(servers: Servers) -> None:
    node = node_or_skip()
    result = run_conformance(
        node,
        servers.main.target,
        "--blob",
        servers.blob,
        "--blob-size",
        str(len(BLOB)),
        "--blob-repo",
        REPO,
        "--max-batch",
        str(MAX_BATCH),
        "--no-delete-target",
        servers.nodelete.target,
        "--auth-target",
        servers.secured.target,
        "--read-token",
        READ_TOKEN,
        "--write-token",
        WRITE_TOKEN,
    )
    out = result.stdout + result.stderr
    print(out)  # every check, one line each (shown with pytest -s or on failure)
    assert result.returncode == 0, out
    assert f"RPCs checked: {', '.join(RPCS)}" in out
    for case in range(1, 6):
        assert f"case {case}:" in out
    for reason in (
        "BLOB_UNKNOWN",
        "DIGEST_INVALID_FORMAT",
        "DIGEST_INVALID_LENGTH",
        "DIGEST_UNSUPPORTED",
        "DESCRIPTOR_INVALID",
        "REPOSITORY_NAME_INVALID",
        "BATCH_TOO_LARGE",
        "REQUEST_INVALID",
        "UNSUPPORTED",
        "UNAUTHENTICATED",
        "PERMISSION_DENIED",
    ):
        assert reason in out, reason
    assert "ok   Stat: the service config balances an ipv4:A,B target round robin" in out
    assert "FAIL" not in out
    assert " 0 failed" in out


def test_node_client_fails_when_the_server_breaks_the_contract(tmp_path: Path, layout: Layout) -> None:
    """The Node checks can fail: with deletion disabled, the contract's case 5 cannot pass."""
    node = node_or_skip()
    server = ServerProcess(base_config(layout.root, delete=False), tmp_path).start()
    try:
        result = run_conformance(node, server.target)
    finally:
        server.stop()
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "FAIL Clear: case 5" in out
    assert "call failed with UNIMPLEMENTED UNSUPPORTED" in out


def test_node_client_reports_an_unreachable_server() -> None:
    node = node_or_skip()
    with refused_port() as port:
        result = run_conformance(node, f"127.0.0.1:{port}", "--wait", "1")
    assert result.returncode == 1
    assert "error:" in result.stderr
