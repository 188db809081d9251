"""The server's version and build information, and the ``descriptor_build_info`` metric.

The version is the installed ``descriptor-service`` distribution's
(``importlib.metadata``), falling back to the source tree's ``pyproject.toml`` when
the package runs uninstalled. ``descriptor-server --version`` prints it, the start-up
line carries it, and :func:`build_info_collector` exports it to Prometheus as

    descriptor_build_info{version="0.1.0",revision="…",python_version="3.11.7",
                          grpcio_version="1.85.3",protobuf_version="7.36.2"} 1

``revision`` is the source commit: ``$DESCRIPTOR_REVISION`` when set (an image build
passes it in), else the commit pip recorded for a VCS install (PEP 610
``direct_url.json``), else, for an editable install in a git checkout, that
checkout's ``HEAD`` (the package runs from ``server/`` of a checkout); empty when none
of these is known (a wheel installed from a file or an index).
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import json
import os
import platform
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from descriptor_client._version import distribution_version
from descriptor_client._version import version as client_version
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

DISTRIBUTION = "descriptor-service"
SOURCE_ROOT = Path(__file__).resolve().parents[3]  # app/ -> descriptor_server/ -> server/ -> checkout
BUILD_INFO = "descriptor_build_info"
BUILD_INFO_LABELS = ("version", "revision", "python_version", "grpcio_version", "protobuf_version")


@functools.cache
def version() -> str:
    """This server's version (``descriptor-service``), for example ``0.1.0``."""
    return distribution_version(DISTRIBUTION, SOURCE_ROOT / "pyproject.toml")


def _installed_revision() -> str:
    """The commit of a VCS install, or of the git checkout this module runs from."""
    try:
        text = importlib.metadata.distribution(DISTRIBUTION).read_text("direct_url.json")
    except importlib.metadata.PackageNotFoundError:
        text = None
    if text:
        try:
            commit = json.loads(text).get("vcs_info", {}).get("commit_id")
        except (ValueError, AttributeError):
            commit = None
        if isinstance(commit, str) and commit:
            return commit
    # An editable install or PYTHONPATH: this file is server/descriptor_server/ of a checkout.
    if not (SOURCE_ROOT / ".git").exists() or not (SOURCE_ROOT / "server" / "descriptor_server").is_dir():
        return ""
    try:
        done = subprocess.run(
            ["git", "-C", str(SOURCE_ROOT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


@functools.cache
def revision() -> str:
    """The source commit this server was built from, or ``""`` when unknown."""
    return os.environ.get("DESCRIPTOR_REVISION", "").strip() or _installed_revision()


def _version_of(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return ""


def build_info() -> dict[str, str]:
    """The labels of ``descriptor_build_info``, in :data:`BUILD_INFO_LABELS` order."""
    return {
        "version": version(),
        "revision": revision(),
        "python_version": platform.python_version(),
        "grpcio_version": _version_of("grpcio"),
        "protobuf_version": _version_of("protobuf"),
    }


def version_text() -> str:
    """What ``descriptor-server --version`` prints: one line, the version first."""
    info = build_info()
    details = [f"descriptor-client {client_version()}", f"python {info['python_version']}"]
    details += [f"grpcio {info['grpcio_version']}", f"protobuf {info['protobuf_version']}"]
    revision = f"revision {info['revision'][:12]}; " if info["revision"] else ""
    return f"descriptor-server {info['version']} ({revision}{', '.join(details)})"


class VersionAction(argparse.Action):
    """``--version``: print :func:`version_text` unwrapped (argparse's own action wraps it) and exit 0."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=kwargs.get("help"))

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        print(version_text())
        parser.exit(0)


class BuildInfoCollector(Collector):
    """``descriptor_build_info{version,revision,python_version,grpcio_version,protobuf_version} 1``."""

    def __init__(self) -> None:
        self.labels = build_info()

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            BUILD_INFO,
            "Build information of the running descriptor-server; the value is always 1.",
            labels=BUILD_INFO_LABELS,
        )
        family.add_metric([self.labels[name] for name in BUILD_INFO_LABELS], 1.0)
        yield family


def build_info_collector() -> BuildInfoCollector:
    """The collector to register in a server's registry."""
    return BuildInfoCollector()
