"""The committed generated code matches protos/ (tools/genproto.py --check)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_up_to_date() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "genproto.py"), "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, (
        f"generated code differs from protos/; run tools/genproto.py\n{proc.stdout}{proc.stderr}"
    )


def test_generated_code_runs_on_the_oldest_grpcio_the_client_accepts() -> None:
    """The generator's version is written into the generated stubs, which refuse a grpcio
    older than it: it must not be newer than the client's grpcio floor, or a user with that
    floor installed gets a RuntimeError at import."""
    import re

    from descriptor_client._proto.descriptor.v1 import descriptor_pb2_grpc

    floor = re.search(r'"grpcio>=([0-9.]+)', (ROOT / "client" / "pyproject.toml").read_text())
    assert floor is not None, "client/pyproject.toml names no grpcio floor"

    def version(text: str) -> tuple[int, ...]:
        return tuple(int(part) for part in text.split("."))

    assert version(descriptor_pb2_grpc.GRPC_GENERATED_VERSION) <= version(floor.group(1))
