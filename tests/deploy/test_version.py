"""One version for both distributions, shown by --version, the start-up line and descriptor_build_info."""

from __future__ import annotations

import importlib.metadata
import platform
import re
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import grpc
import pytest
from descriptor_server.app import version as version_module
from helpers.support import Layout, ServerProcess, base_config, running_server, wait_for
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]


def pyproject(path: Path) -> dict[str, object]:
    with path.open("rb") as f:
        project: dict[str, object] = tomllib.load(f)["project"]
    return project


SERVER = pyproject(ROOT / "pyproject.toml")
CLIENT = pyproject(ROOT / "client" / "pyproject.toml")
VERSION = str(SERVER["version"])


def test_one_version_for_both_distributions_and_the_changelog() -> None:
    assert CLIENT["version"] == VERSION
    assert f"descriptor-client=={VERSION}" in list(SERVER["dependencies"])  # type: ignore[call-overload]
    changelog = (ROOT / "CHANGELOG.md").read_text()
    released = re.findall(r"^## \[(\d+\.\d+\.\d+)\] - \d{4}-\d{2}-\d{2}$", changelog, re.M)
    assert released, "CHANGELOG.md has no released version"
    assert released[0] == VERSION, "the newest release in CHANGELOG.md is not pyproject's version"
    assert changelog.index("## [Unreleased]") < changelog.index(f"## [{VERSION}]")


def test_the_installed_distributions_report_that_version() -> None:
    import descriptor_client

    assert importlib.metadata.version("descriptor-service") == VERSION
    assert importlib.metadata.version("descriptor-client") == VERSION
    assert descriptor_client.__version__ == VERSION
    assert version_module.version() == VERSION


def test_the_pyproject_fallback(tmp_path: Path) -> None:
    from descriptor_client._version import distribution_version, pyproject_version

    assert pyproject_version(ROOT / "pyproject.toml") == VERSION
    assert distribution_version("no-such-distribution-here", ROOT / "client" / "pyproject.toml") == VERSION
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    assert pyproject_version(tmp_path / "pyproject.toml") == "0+unknown"
    assert pyproject_version(tmp_path / "missing.toml") == "0+unknown"


def test_license_matches_the_declared_one() -> None:
    assert SERVER["license"] == CLIENT["license"] == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text
    assert "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert (ROOT / "client" / "LICENSE").read_text() == text


@pytest.mark.parametrize("command", [["descriptor-server"], [sys.executable, "-m", "descriptor_server"]])
def test_server_version_flag(command: list[str]) -> None:
    if command == ["descriptor-server"]:
        command = [str(Path(sys.executable).with_name("descriptor-server"))]
    done = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"descriptor-server {VERSION} (")
    assert f"descriptor-client {VERSION}" in done.stdout
    assert f"python {platform.python_version()}" in done.stdout
    assert f"grpcio {grpc.__version__}" in done.stdout
    assert done.stdout.count("\n") == 1  # one line, not wrapped


def test_client_version_flag() -> None:
    script = Path(sys.executable).with_name("descriptorctl")
    done = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stdout) == (0, f"descriptorctl {VERSION}\n")


def git_head() -> str:
    done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else ""


def build_info(server: ServerProcess) -> dict[str, str]:
    url = re.search(r"metrics endpoint at (http://\S+)", server.output)
    assert url, server.output
    with urllib.request.urlopen(url.group(1), timeout=10) as resp:
        text = resp.read().decode()
    found = [
        (s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "descriptor_build_info"
    ]
    assert len(found) == 1, found
    labels, value = found[0]
    assert value == 1
    return labels


def test_start_up_line_and_build_info_metric(tmp_path: Path, layout: Layout) -> None:
    config = base_config(layout.root)
    config["http"] = {"debug": {"addr": "127.0.0.1:0", "prometheus": {"enabled": True}}}
    with running_server(config, tmp_path) as server:
        assert re.search(rf"descriptor-server {re.escape(VERSION)} listening on 127\.0\.0\.1:\d+", server.output)
        labels = build_info(server)
    assert set(labels) == set(version_module.BUILD_INFO_LABELS)
    assert labels["version"] == VERSION
    assert labels["python_version"] == platform.python_version()
    assert labels["grpcio_version"] == grpc.__version__
    assert labels["protobuf_version"] == importlib.metadata.version("protobuf")
    assert labels["revision"] == git_head()  # an editable install in a git checkout


def test_build_info_reads_one_with_two_workers(tmp_path: Path, layout: Layout) -> None:
    """Worker 0 serves every worker's totals; the build is one, so its info stays 1."""
    config = base_config(layout.root, delete=False, workers=2)
    config["http"] = {"debug": {"addr": "127.0.0.1:0", "prometheus": {"enabled": True}}}
    with running_server(config, tmp_path) as server:
        wait_for(lambda: "descriptor_workers_reporting 2.0" in scrape_text(server), timeout=30)
        assert build_info(server)["version"] == VERSION


def scrape_text(server: ServerProcess) -> str:
    url = re.search(r"metrics endpoint at (http://\S+)", server.output)
    if url is None:
        return ""
    with urllib.request.urlopen(url.group(1), timeout=10) as resp:
        text: str = resp.read().decode()
    return text


def test_revision_from_the_environment(tmp_path: Path, layout: Layout) -> None:
    config = base_config(layout.root)
    config["http"] = {"debug": {"addr": "127.0.0.1:0", "prometheus": {"enabled": True}}}
    with running_server(config, tmp_path, env={"DESCRIPTOR_REVISION": "0123abcd"}) as server:
        assert build_info(server)["revision"] == "0123abcd"


def test_collector_exposes_one_gauge_sample() -> None:
    registry = CollectorRegistry()
    registry.register(version_module.build_info_collector())
    text = generate_latest(registry).decode()
    assert "# TYPE descriptor_build_info gauge" in text
    (line,) = [line for line in text.splitlines() if line.startswith("descriptor_build_info{")]
    assert f'version="{VERSION}"' in line
    assert line.endswith("} 1.0")
