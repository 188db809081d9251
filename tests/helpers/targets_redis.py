"""Conformance targets for the Redis cache: each topology directly, and a server using it.

Every target starts from an empty Redis (flushed before the test) on the session's
real servers (``redis_servers.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from descriptor_client import AsyncDescriptorClient
from descriptor_client.protocol import BlobDescriptorService
from descriptor_server.caches.redis import RedisCache, from_config
from descriptor_server.config import RedisConfig

from helpers.redis_servers import RedisProcess, SentinelSetUp, flush
from helpers.support import ServerProcess, base_config


def redis_config(addrs: list[str], **kwargs: Any) -> RedisConfig:
    return RedisConfig(addrs=addrs, **kwargs)


@pytest.fixture
async def target_redis_standalone(redis_standalone: RedisProcess) -> AsyncIterator[RedisCache]:
    flush(redis_standalone)
    cache = from_config(redis_config([redis_standalone.addr]))
    try:
        yield cache
    finally:
        await cache.close()


@pytest.fixture
async def target_redis_cluster(redis_cluster: list[RedisProcess]) -> AsyncIterator[RedisCache]:
    flush(*redis_cluster)
    cache = from_config(redis_config([n.addr for n in redis_cluster]))
    try:
        yield cache
    finally:
        await cache.close()


@pytest.fixture
async def target_redis_sentinel(redis_sentinel: SentinelSetUp) -> AsyncIterator[RedisCache]:
    flush(redis_sentinel.master)
    cache = from_config(redis_config([redis_sentinel.sentinel.addr], mastername=redis_sentinel.mastername))
    try:
        yield cache
    finally:
        await cache.close()


def server_redis_config(root: Path, addrs: list[str], **redis: Any) -> dict[str, Any]:
    """``base_config`` with the Redis cache on ``addrs``."""
    config = base_config(root, cache="redis")
    config["redis"] = {"addrs": addrs, **redis}
    return config


@pytest.fixture
async def target_server_redis(tmp_path: Path, redis_standalone: RedisProcess) -> AsyncIterator[BlobDescriptorService]:
    flush(redis_standalone)
    root = tmp_path / "empty-registry"
    root.mkdir()
    proc = ServerProcess(server_redis_config(root, [redis_standalone.addr]), tmp_path).start()
    try:
        async with AsyncDescriptorClient(proc.target) as client:
            yield client
    finally:
        proc.stop()
