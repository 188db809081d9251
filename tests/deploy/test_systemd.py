"""deploy/systemd/descriptor-server.service: accepted by ``systemd-analyze verify``, and sandboxed."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from descriptor_server.config import GrpcConfig, parse_duration

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "systemd" / "descriptor-server.service"
STORAGE_ROOT = "/var/lib/registry"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> every value in order (systemd keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"key outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"not key=value: {line}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


UNIT_DATA = parse_unit(UNIT.read_text())
SERVICE = UNIT_DATA["Service"]


def value(key: str) -> str:
    values = SERVICE.get(key)
    assert values, f"{key} not set"
    return values[-1]


def test_sections() -> None:
    assert set(UNIT_DATA) == {"Unit", "Service", "Install"}
    assert UNIT_DATA["Install"]["WantedBy"] == ["multi-user.target"]
    assert "network-online.target" in UNIT_DATA["Unit"]["After"][0]


def test_runs_the_server_with_its_config() -> None:
    argv = shlex.split(value("ExecStart"))
    assert Path(argv[0]).name == "descriptor-server"
    assert argv[1:] == ["--config", "/etc/descriptor/config.yml"]
    assert value("ConfigurationDirectory") == "descriptor"  # /etc/descriptor
    assert value("RestartPreventExitStatus") == "2"  # a config error is not retried
    assert value("Type") == "exec"


def test_not_root() -> None:
    dynamic = SERVICE.get("DynamicUser", ["no"])[-1] == "yes"
    user = SERVICE.get("User", ["root"])[-1]
    assert dynamic or user not in {"root", "0"}


def test_sandboxing_options() -> None:
    assert value("ProtectSystem") == "strict"
    assert value("ProtectHome") in {"yes", "read-only", "tmpfs"}
    for key in ("PrivateTmp", "PrivateDevices", "NoNewPrivileges", "RestrictSUIDSGID", "ProtectKernelTunables"):
        assert value(key) == "yes", key
    assert value("CapabilityBoundingSet") == ""  # no capabilities at all
    assert SERVICE.get("AmbientCapabilities", [""])[-1] == ""
    assert set(value("RestrictAddressFamilies").split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    filters = SERVICE["SystemCallFilter"]
    assert filters[0] == "@system-service"
    assert any(f.startswith("~") and "@privileged" in f for f in filters[1:])
    assert value("SystemCallErrorNumber") == "EPERM"
    assert value("SystemCallArchitectures") == "native"
    # The one writable place: the registry's storage root (Clear deletes there), "-": the
    # unit still starts on a machine whose registry root is elsewhere.
    assert value("ReadWritePaths").split() == [f"-{STORAGE_ROOT}"]


def test_documentation_points_at_this_repositorys_docs() -> None:
    """``Documentation=`` names docs/deploy.md's systemd section (a file and heading that exist)."""
    (url,) = UNIT_DATA["Unit"]["Documentation"][0].split()
    m = re.fullmatch(r"https://github\.com/descriptor-service/descriptor-service/blob/main/(\S+)#(\S+)", url)
    assert m, url
    doc = ROOT / m.group(1)
    assert doc.is_file(), doc
    assert f"## {m.group(2)}" in doc.read_text().lower()
    # The project's own name for itself: the Go modules' path.
    assert "module github.com/descriptor-service/descriptor-service/" in (ROOT / "client-go" / "go.mod").read_text()


def test_the_group_write_access_clear_needs_is_explained() -> None:
    text = UNIT.read_text()
    assert "SupplementaryGroups" in text
    assert "g+rwX" in text


def test_reload_sends_sighup() -> None:
    """``systemctl reload`` re-reads certificates and tokens (SIGHUP) without a restart."""
    assert shlex.split(value("ExecReload")) == ["/bin/kill", "-HUP", "$MAINPID"]


def test_stop_waits_for_the_drain() -> None:
    assert value("KillSignal") == "SIGTERM"
    assert value("KillMode") == "mixed"  # the parent forwards SIGTERM to its workers
    drain = parse_duration(GrpcConfig().drain, "grpc.drain")
    stop = parse_duration(value("TimeoutStopSec"), "TimeoutStopSec")
    assert stop > drain + 2  # the drain, then up to 2 s for a backend thread stuck at exit


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.skip("systemd-analyze not installed (./dev test installs Debian's systemd)")
    return found


def verify(unit: Path) -> str:
    done = subprocess.run(
        [systemd_analyze(), "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    # verify exits 0 on unknown keys and bad values too: what it says about the file is the verdict.
    return "\n".join(line for line in (done.stdout + done.stderr).splitlines() if unit.name in line)


def installed_copy(tmp_path: Path, text: str) -> Path:
    """The unit with ExecStart pointing at this venv's descriptor-server (verify checks it exists)."""
    script = Path(sys.executable).with_name("descriptor-server")
    path = tmp_path / UNIT.name
    path.write_text(text.replace("/opt/descriptor-service/bin/descriptor-server", str(script)))
    return path


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    assert verify(installed_copy(tmp_path, UNIT.read_text())) == ""


def test_systemd_analyze_verify_would_catch_a_mistake(tmp_path: Path) -> None:
    broken = UNIT.read_text().replace("ProtectHome=yes", "ProtectHomme=yes")
    assert "ProtectHomme" in verify(installed_copy(tmp_path, broken))
