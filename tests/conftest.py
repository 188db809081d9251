"""Shared fixtures. Conformance targets are registered in ``targets.py``."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from descriptor_server.backends.filesystem import FilesystemBackend
from support import Layout, ServerProcess, base_config

pytest_plugins = ["targets", "redis_servers", "targets_redis", "targets_backends"]


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    root = tmp_path / "registry"
    root.mkdir()
    return Layout(root)


@pytest.fixture
def server(tmp_path: Path, layout: Layout) -> Iterator[ServerProcess]:
    """The real server command over ``layout``, deletion enabled, in-memory cache."""
    proc = ServerProcess(base_config(layout.root), tmp_path).start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
async def backend(layout: Layout) -> AsyncIterator[FilesystemBackend]:
    """The filesystem backend over ``layout``, closed afterwards."""
    fs = FilesystemBackend(str(layout.root))
    try:
        yield fs
    finally:
        await fs.close()
