"""Conformance targets: every cache (directly) and every server set-up (through the client).

Each target is a fixture yielding an object with the asyncio BlobDescriptorService
protocol; ``TARGETS`` lists them for the parametrised conformance suite. A new cache or
backend adds one fixture here and its name to ``TARGETS``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from descriptor_client import AsyncDescriptorClient
from descriptor_client.protocol import BlobDescriptorService
from descriptor_server.caches.inmemory import InMemoryCache

from helpers.support import ServerProcess, base_config

TARGETS = [
    "target_inmemory",
    "target_server_inmemory",
    "target_redis_standalone",
    "target_redis_cluster",
    "target_redis_sentinel",
    "target_server_redis",
    "target_server_s3",
    "target_server_chained",
]


@pytest.fixture
async def target_inmemory() -> BlobDescriptorService:
    return InMemoryCache(100)


@pytest.fixture
async def target_server_inmemory(tmp_path: Path) -> AsyncIterator[BlobDescriptorService]:
    root = tmp_path / "empty-registry"
    root.mkdir()
    proc = ServerProcess(base_config(root), tmp_path).start()
    try:
        async with AsyncDescriptorClient(proc.target) as client:
            yield client
    finally:
        proc.stop()
