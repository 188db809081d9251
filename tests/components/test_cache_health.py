"""The cache's health against a real Redis/Valkey: the start-up check naming the key at
fault, the readiness probe, one line on failure and one on recovery; and a password
that looks like YAML (``#s3cret``, ``0123``) taken as written from the environment.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from descriptor_client import AsyncDescriptorClient, BackendUnavailableError, Descriptor
from descriptor_server.caches.redis import RedisCacheError, from_config
from descriptor_server.config import load
from descriptor_server.wrappers.watch import WatchedCache, check_cache_at_start, combined_probe
from helpers.redis_servers import RedisProcess
from helpers.support import A256, OCT, REPO, Layout, ServerProcess, refused_port
from helpers.targets_redis import server_redis_config

PASSWORDS = ["#s3cret", "0123", "12:30", "0x1F"]


def redis_env(addr: str, **keys: str) -> dict[str, str]:
    env = {"DESCRIPTOR_STORAGE_CACHE_BLOBDESCRIPTOR": "redis", "DESCRIPTOR_REDIS_ADDRS": f"[{addr}]"}
    env.update({f"DESCRIPTOR_REDIS_{k.upper()}": v for k, v in keys.items()})
    return env


async def _check(env: dict[str, str]) -> str | None:
    config = load(None, env)
    cache = from_config(config.redis)
    try:
        return await check_cache_at_start(config, cache)
    finally:
        await cache.close()


@pytest.mark.parametrize("password", PASSWORDS)
async def test_a_password_override_is_taken_verbatim(redis_own: RedisProcess, password: str) -> None:
    with redis_own.client() as admin:
        admin.config_set("requirepass", password)
    config = load(None, redis_env(redis_own.addr, password=password))
    assert config.redis.password == password
    cache = from_config(config.redis)
    try:
        assert await check_cache_at_start(config, cache) is None
        await cache.set_descriptor(A256, Descriptor(OCT, A256, 1))
        assert await cache.stat(A256) == Descriptor(OCT, A256, 1)
    finally:
        await cache.close()


async def test_start_check_names_the_key_at_fault(
    redis_own: RedisProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with redis_own.client() as admin:
        admin.config_set("requirepass", "right")
    secret = tmp_path / "password"
    secret.write_text("right\n")
    addr = redis_own.addr
    caplog.set_level(logging.ERROR, logger="descriptor_server.cache")
    assert await _check(redis_env(addr, passwordfile=str(secret))) is None
    config = load(None, redis_env(addr, password="wrong"))
    watched = WatchedCache(from_config(config.redis), "redis cache")  # as the server may wrap it
    try:
        found = await check_cache_at_start(config, watched)
    finally:
        await watched.close()
    assert found is not None
    assert found.startswith("redis.password: authentication failed")
    wrong = await _check(redis_env(addr, password="wrong"))
    assert wrong is not None
    assert wrong.startswith("redis.password: authentication failed")
    missing = await _check(redis_env(addr))
    assert missing is not None
    assert missing.startswith("redis.password: the server requires a password")
    db = await _check(redis_env(addr, password="right", db="99"))
    assert db is not None
    assert db.startswith("redis.db: database 99 refused")
    with refused_port() as port:
        down = await _check(redis_env(f"127.0.0.1:{port}"))
    assert down is not None
    assert down.startswith(f"redis.addrs: cannot connect to 127.0.0.1:{port}")
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 5
    assert all("redis cache unusable at start" in e for e in errors)
    # Other caches need no check.
    assert await check_cache_at_start(load(None, {}), from_config(load(None, {}).redis)) is None


async def test_watched_cache_probe_and_one_line_on_recovery(
    redis_own: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    # Without the near cache: it would answer what it holds until it notices that its
    # connection is gone (by design), and this test is about the calls that reach Redis.
    env = redis_env(redis_own.addr, readtimeout="200ms", dialtimeout="200ms", nearcache_size="0")
    config = load(None, env)
    inner = from_config(config.redis)
    inner.retry_after = 0.0  # probe Redis on every call (no back-off between attempts)
    cache = WatchedCache(inner, "redis cache")
    caplog.set_level(logging.INFO, logger="descriptor_server.cache")
    try:
        await cache.probe()
        await cache.set_descriptor(A256, Descriptor(OCT, A256, 3), REPO)
        assert await cache.stat_many([A256], REPO) == [Descriptor(OCT, A256, 3)]
        redis_own.stop()
        for _ in range(3):
            with pytest.raises(RedisCacheError):
                await cache.stat(A256, REPO)
        with pytest.raises(BackendUnavailableError) as info:
            await cache.probe()
        assert info.value.message.startswith("redis cache unavailable")
        assert cache.failing
        assert cache.failed_calls == 4
        redis_own.restart()
        await cache.probe()  # answers (an unknown digest): healthy again
        assert not cache.failing
        await cache.probe()
    finally:
        await cache.close()
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "descriptor_server.cache"]
    assert [level for level, _ in lines] == [logging.WARNING, logging.INFO]
    assert lines[0][1].startswith("redis cache failing:")
    assert lines[1][1].startswith("redis cache is back after failing for")
    assert "(4 failed calls)" in lines[1][1]


async def test_combined_probe_fails_when_either_fails() -> None:
    calls: list[str] = []

    async def ok() -> None:
        calls.append("ok")

    async def down() -> None:
        calls.append("down")
        raise BackendUnavailableError("down")

    assert combined_probe(None, None) is None
    assert combined_probe(ok, None) is ok
    both = combined_probe(ok, down)
    assert both is not None
    with pytest.raises(BackendUnavailableError):
        await both()
    assert calls == ["ok", "down"]


async def test_server_with_a_password_that_looks_like_yaml(redis_own: RedisProcess, tmp_path: Path) -> None:
    # The case: "#s3cret" in DESCRIPTOR_REDIS_PASSWORD became empty, and every
    # Redis call failed as a wrong password. Now the cache answers: a hit, no error.
    password = "#s3cret"
    with redis_own.client() as admin:
        admin.config_set("requirepass", password)
    layout = Layout(tmp_path / "registry")
    layout.root.mkdir()
    digest = layout.push(REPO, b"cached in redis")
    config = server_redis_config(layout.root, [redis_own.addr])
    proc = ServerProcess(config, tmp_path, env={"DESCRIPTOR_REDIS_PASSWORD": password}).start()
    try:
        async with AsyncDescriptorClient(proc.target) as client:
            await client.stat(digest, REPO)
            await client.stat(digest, REPO)
            metrics = await client.metrics()
            assert (metrics.hits, metrics.errors) == (1, 0)
    finally:
        proc.stop()
