"""deploy/compose/: the service, Redis and a registry with the descriptorcache middleware.

Validated, not started: ``docker-compose config`` (Debian's docker-compose, which checks
the file against the Compose schema without a container engine) accepts it and refuses
a misspelt key; the service's config passes ``descriptor-server --check-config``; the
pieces agree with each other (the registry's target is the service's name and port, the
stop grace period is above the drain, the image tag is the one ``./dev image`` builds).
"""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from descriptor_server import config as cfg
from helpers.support import run_server_command

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "compose"


def compose_config(path: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose not installed (./dev test installs Debian's)")
    return subprocess.run(
        [binary, "-f", str(path), "config"], capture_output=True, text=True, timeout=60, check=False, cwd=path.parent
    )


def services() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((COMPOSE / "compose.yaml").read_text())["services"]
    return data


def test_compose_accepts_the_file_and_refuses_a_mistake(tmp_path: Path) -> None:
    done = compose_config(COMPOSE / "compose.yaml")
    assert done.returncode == 0, done.stderr
    assert set(yaml.safe_load(done.stdout)["services"]) == {"redis", "descriptor", "registry"}
    for name in ("descriptor.yml", "registry.yml"):
        shutil.copy(COMPOSE / name, tmp_path / name)
    broken = (COMPOSE / "compose.yaml").read_text().replace("stop_grace_period: 40s", "stop_grace_perod: 40s")
    (tmp_path / "compose.yaml").write_text(broken)
    done = compose_config(tmp_path / "compose.yaml")
    assert done.returncode != 0
    assert "stop_grace_perod" in done.stderr


def test_the_service_config_is_accepted(tmp_path: Path) -> None:
    done = run_server_command(["--check-config", str(COMPOSE / "descriptor.yml")], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    config = cfg.load(str(COMPOSE / "descriptor.yml"), environ={})
    assert config.storage.cache.blobdescriptor == "redis"  # shared, so deletion is safe with replicas
    assert config.storage.delete.enabled


def test_the_pieces_agree() -> None:
    svc = services()
    config = cfg.load(str(COMPOSE / "descriptor.yml"), environ={})
    registry = yaml.safe_load((COMPOSE / "registry.yml").read_text())
    # The registry reaches the service by its compose name, on its gRPC port; no cache of its own.
    (middleware,) = registry["middleware"]["repository"]
    assert middleware["name"] == "descriptorcache"
    host, port = middleware["options"]["target"].rsplit(":", 1)
    assert host == "descriptor"
    assert int(port) == int(config.grpc.addr.rsplit(":", 1)[1])
    assert "cache" not in registry["storage"]
    assert registry["storage"]["delete"]["enabled"] is config.storage.delete.enabled is True
    # One storage: the same volume at both roots; the service reaches Redis by its name.
    assert config.storage.filesystem is not None
    root = config.storage.filesystem.rootdirectory
    assert root == registry["storage"]["filesystem"]["rootdirectory"]
    assert f"registry-data:{root}" in svc["descriptor"]["volumes"]
    assert f"registry-data:{root}" in svc["registry"]["volumes"]
    assert config.redis.addrs == ["redis:6379"]
    # Stop waits for the drain; the health check asks the health listener.
    grace = cfg.parse_duration(svc["descriptor"]["stop_grace_period"], "stop_grace_period")
    assert grace > config.grpc.drain
    assert svc["descriptor"]["healthcheck"]["test"][-2:] == [
        f"127.0.0.1:{config.grpc.healthaddr.rsplit(':', 1)[1]}",
        "health",
    ]
    # Confined as in the tests of the image; both as one UID, so Clear may delete the registry's files.
    for name in ("descriptor", "registry"):
        assert svc[name]["read_only"] is True
        assert svc[name]["cap_drop"] == ["ALL"]
        assert svc[name]["user"] == "10001:10001"
    with (ROOT / "pyproject.toml").open("rb") as f:
        version = tomllib.load(f)["project"]["version"]
    assert svc["descriptor"]["image"] == f"localhost/descriptor-service:{version}"  # ./dev image's tag
    assert (ROOT / svc["registry"]["build"]["dockerfile"]).is_file()
