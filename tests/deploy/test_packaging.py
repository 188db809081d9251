"""The two distributions, built as wheels and installed into fresh virtual environments.

``descriptor-client`` (from ``client/``) must carry the generated code, its stubs and
``py.typed``, and work with nothing of the server installed: no redis, PyYAML,
prometheus-client, httpx, boto3 or ``descriptor_server``. ``descriptor-service`` (from
the root) carries the server only and depends on the client at the same version. Each
wheel is built from a copy of the local tree (so no earlier ``build/`` can leak into it)
with ``pip wheel --no-deps --no-build-isolation`` (the build dependencies are the
locked ones of the test environment) and installed with the runtime dependencies pinned
by ``uv.lock`` (``uv export``, as a pip constraints file), and the server installed from
its wheel serves the client installed from its own.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import tomllib
import venv
import zipfile
from collections.abc import Iterator
from email.parser import Parser
from pathlib import Path

import pytest
import yaml
from helpers.support import READY

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
with (ROOT / "pyproject.toml").open("rb") as _f:
    VERSION = tomllib.load(_f)["project"]["version"]
CLIENT_DEPENDENCIES = {"grpcio", "grpcio-status", "protobuf", "googleapis-common-protos"}
SERVER_ONLY_MODULES = ("descriptor_server", "redis", "yaml", "prometheus_client", "httpx", "boto3", "grpc_health")


def run(*args: str | Path, timeout: float = 600, **kwargs: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )  # type: ignore[call-overload]
    assert done.returncode == 0, f"{args}:\n{done.stdout}\n{done.stderr}"
    result: subprocess.CompletedProcess[str] = done
    return result


def source_copy(dest: Path) -> Path:
    """The files a build reads (as deploy/Containerfile copies them), without build leftovers."""
    leftovers = shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, dest / name)
    for folder in ("client", "server"):
        shutil.copytree(ROOT / folder, dest / folder, symlinks=True, ignore=leftovers)
    return dest


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    src = source_copy(tmp_path_factory.mktemp("src"))
    out = tmp_path_factory.mktemp("wheels")
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", out, src / "client", src)
    found = {p.name.split("-")[0]: p for p in out.glob("*.whl")}
    assert set(found) == {"descriptor_client", "descriptor_service"}, found
    return found


@pytest.fixture(scope="module")
def constraints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """uv.lock's versions of every third-party package, as a pip constraints file."""
    uv = ROOT / ".tools" / "uv" / "bin" / "uv"
    if not uv.exists():  # a failure in CI (conftest)
        pytest.skip(f"{uv} is not installed (./dev installs it)")
    out = tmp_path_factory.mktemp("lock") / "constraints.txt"
    run(uv, "export", "--frozen", "--all-extras", "--no-hashes", "--no-emit-workspace", "--quiet", "-o", out, cwd=ROOT)
    return out


def fresh_venv(path: Path, constraints: Path, *wheel_files: Path) -> Path:
    """A new venv (no system site-packages) with the wheels installed by this pip, their
    dependencies at the versions uv.lock pins."""
    venv.EnvBuilder(with_pip=False, clear=True).create(path)
    python = path / "bin" / "python"
    run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-input", "-c", constraints, *wheel_files)
    return python


@pytest.fixture(scope="module")
def client_venv(wheels: dict[str, Path], constraints: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fresh_venv(tmp_path_factory.mktemp("client-venv") / "venv", constraints, wheels["descriptor_client"])


@pytest.fixture(scope="module")
def server_venv(wheels: dict[str, Path], constraints: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fresh_venv(
        tmp_path_factory.mktemp("server-venv") / "venv",
        constraints,
        wheels["descriptor_service"],
        wheels["descriptor_client"],
    )


def metadata(wheel: Path) -> tuple[list[str], dict[str, list[str]]]:
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        msg = Parser().parsestr(z.read(meta).decode())
    fields: dict[str, list[str]] = {}
    for key, value in msg.items():
        fields.setdefault(key, []).append(value)
    return names, fields


def requirement_names(fields: dict[str, list[str]]) -> dict[str, str]:
    """Requires-Dist without extras markers: name -> the whole requirement."""
    out = {}
    for req in fields.get("Requires-Dist", []):
        if "extra ==" in req:
            continue
        name = re.split(r"[\s<>=!~\[;(]", req, maxsplit=1)[0].lower()
        out[name] = req
    return out


def test_client_wheel_contents(wheels: dict[str, Path]) -> None:
    names, fields = metadata(wheels["descriptor_client"])
    generated = "descriptor_client/_proto/descriptor/v1/"
    for expected in (
        "descriptor_client/__init__.py",
        "descriptor_client/py.typed",
        "descriptor_client/cli.py",
        generated + "descriptor_pb2.py",
        generated + "descriptor_pb2.pyi",
        generated + "descriptor_pb2_grpc.py",
        generated + "__init__.py",
    ):
        assert expected in names, expected
    assert not [n for n in names if n.startswith("descriptor_server")]
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert fields["Name"] == ["descriptor-client"]
    assert fields["Version"] == [VERSION]
    assert fields["License-Expression"] == ["Apache-2.0"]
    assert set(requirement_names(fields)) == CLIENT_DEPENDENCIES
    with zipfile.ZipFile(wheels["descriptor_client"]) as z:
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        assert "descriptorctl = descriptor_client.cli:main" in z.read(entry_points).decode()


def test_server_wheel_contents(wheels: dict[str, Path]) -> None:
    names, fields = metadata(wheels["descriptor_service"])
    for expected in (
        "descriptor_server/app/__init__.py",
        "descriptor_server/py.typed",
        "descriptor_server/app/version.py",
    ):
        assert expected in names, expected
    assert any(n.startswith("descriptor_server/caches/") for n in names)
    assert any(n.startswith("descriptor_server/backends/") for n in names)
    assert not [n for n in names if n.startswith("descriptor_client")]  # it comes from descriptor-client
    assert fields["Name"] == ["descriptor-service"]
    assert fields["Version"] == [VERSION]
    assert fields["License-Expression"] == ["Apache-2.0"]
    requirements = requirement_names(fields)
    assert requirements["descriptor-client"].replace(" ", "") == f"descriptor-client=={VERSION}"
    assert {"redis", "pyyaml", "prometheus-client", "httpx"} <= set(requirements)
    assert "boto3" not in requirements  # the s3 extra
    assert "s3" in fields.get("Provides-Extra", [])


def test_client_venv_has_nothing_of_the_server(client_venv: Path) -> None:
    script = "import importlib.util, sys; print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m)))"
    done = run(client_venv, "-c", script, *SERVER_ONLY_MODULES)
    assert done.stdout.strip() == ""
    for module in ("redis", "yaml", "descriptor_server"):
        failed = subprocess.run([client_venv, "-c", f"import {module}"], capture_output=True, text=True, check=False)
        assert failed.returncode == 1
        assert "ModuleNotFoundError" in failed.stderr
    done = run(client_venv.with_name("descriptorctl"), "--version")
    assert done.stdout == f"descriptorctl {VERSION}\n"


class VenvServer:
    """``descriptor-server --config FILE`` from a venv, until it says where it listens."""

    def __init__(self, python: Path, config: dict[str, object], workdir: Path) -> None:
        path = workdir / "config.yml"
        path.write_text(yaml.safe_dump(config))
        env = {k: v for k, v in os.environ.items() if not k.startswith("DESCRIPTOR_")}
        self.proc = subprocess.Popen(
            [python.with_name("descriptor-server"), "--config", path],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self.target = ""
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self.ready.wait(60) or not self.target:
            self.stop()
            raise AssertionError("server from the wheel did not start:\n" + "".join(self.lines))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            m = READY.search(line)
            if m and not self.target:
                self.target = f"127.0.0.1:{m.group(2)}"
                self.ready.set()
        self.ready.set()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(30)


@pytest.fixture(scope="module")
def wheel_server(server_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VenvServer]:
    workdir = tmp_path_factory.mktemp("wheel-server")
    root = workdir / "registry"
    root.mkdir()
    config = {
        "storage": {"filesystem": {"rootdirectory": str(root)}, "delete": {"enabled": True}},
        "grpc": {"addr": "127.0.0.1:0"},
    }
    server = VenvServer(server_venv, config, workdir)
    try:
        yield server
    finally:
        assert server.stop() == 0


def test_server_venv_reports_its_version(server_venv: Path, wheel_server: VenvServer) -> None:
    done = run(server_venv.with_name("descriptor-server"), "--version")
    assert done.stdout.startswith(f"descriptor-server {VERSION} (descriptor-client {VERSION}, ")
    assert f"descriptor-server {VERSION} listening on" in "".join(wheel_server.lines)


CLIENT_SCRIPT = """
import sys
from descriptor_client import BlobUnknownError, Descriptor, DescriptorClient

digest = "sha256:" + "ab" * 32
with DescriptorClient(sys.argv[1], timeout=10) as client:
    assert client.health() == "SERVING"  # grpc.health.v1 without grpcio-health-checking
    assert client.health("no.such.Service") == "SERVICE_UNKNOWN"
    try:
        client.stat(digest, "lean/client")
    except BlobUnknownError:
        pass
    else:
        raise SystemExit("expected BLOB_UNKNOWN")
    client.set_descriptor(digest, Descriptor("application/octet-stream", digest, 42), "lean/client")
    print(client.stat(digest, "lean/client").size)
    client.clear(digest, "lean/client")
"""


def test_client_from_its_wheel_calls_the_server_from_its_wheel(client_venv: Path, wheel_server: VenvServer) -> None:
    done = run(client_venv, "-c", CLIENT_SCRIPT, wheel_server.target, timeout=60)
    assert done.stdout == "42\n"
    done = run(client_venv.with_name("descriptorctl"), "--target", wheel_server.target, "health", timeout=60)
    assert done.stdout == "SERVING\n"
