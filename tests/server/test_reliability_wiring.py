"""Issue 12 items 5 and 6 through the server command: the backend bounds, the Redis
start-up check and readiness following the cache, as configured.

The wiring is in app/ and wrappers/: ``wrappers.bounds.from_config`` around the backend,
``wrappers.watch.check_cache_at_start`` at start, ``WatchedCache`` and
``grpc.healthprobecache`` in the health probe.
"""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import httpx
from descriptor_client import AsyncDescriptorClient, BackendUnavailableError
from helpers.backend_support import health_of
from helpers.fifo_support import make_fifo
from helpers.redis_servers import RedisProcess
from helpers.support import REPO, Layout, ServerProcess, base_config, digest_of, free_port, wait_for
from helpers.targets_redis import server_redis_config


def _unblock(fifos: list[Path]) -> None:
    for path in fifos:
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        except OSError as err:
            if err.errno != errno.ENXIO:
                raise


async def test_a_hung_backend_sheds_with_backend_unavailable(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "registry")
    digests = [digest_of(f"hung {i}".encode()) for i in range(30)]
    fifos = [make_fifo(layout.link(REPO, d)) for d in digests]
    config = base_config(layout.root)
    config["storage"].update({"backendtimeout": "1s", "maxinflight": 2, "maxpending": 2})
    metrics_port = free_port()
    config["http"] = {"debug": {"addr": f"127.0.0.1:{metrics_port}", "prometheus": {"enabled": True}}}
    proc = ServerProcess(config, tmp_path).start()
    try:
        async with AsyncDescriptorClient(proc.target, timeout=5) as client:
            results = await asyncio.gather(*(client.stat(d, REPO) for d in digests), return_exceptions=True)
        shed = [r for r in results if isinstance(r, BackendUnavailableError) and "overloaded" in r.message]
        timed_out = [r for r in results if isinstance(r, BackendUnavailableError) and "timed out" in r.message]
        assert len(shed) == 26
        assert len(timed_out) == 4
        async with httpx.AsyncClient(timeout=10) as http:  # the shedding is counted on /metrics
            scrape = (await http.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
        assert "descriptor_backend_shed_total 26.0" in scrape
        assert "descriptor_backend_timeouts_total 4.0" in scrape
    finally:
        _unblock(fifos)
        proc.stop()


def test_a_wrong_redis_password_is_an_error_naming_the_key_at_start(redis_own: RedisProcess, tmp_path: Path) -> None:
    with redis_own.client() as admin:
        admin.config_set("requirepass", "right")
    layout = Layout(tmp_path / "registry")
    layout.root.mkdir(parents=True)
    proc = ServerProcess(server_redis_config(layout.root, [redis_own.addr], password="wrong"), tmp_path).start()
    try:
        wait_for(lambda: "redis.password: authentication failed" in proc.output, timeout=10)
        assert "ERROR" in next(line for line in proc.lines if "redis.password" in line)
    finally:
        proc.stop()


def test_readiness_follows_the_cache_when_configured(redis_own: RedisProcess, tmp_path: Path) -> None:
    layout = Layout(tmp_path / "registry")
    layout.root.mkdir(parents=True)
    config = server_redis_config(layout.root, [redis_own.addr], readtimeout="200ms", dialtimeout="200ms")
    config["grpc"].update({"healthprobecache": True, "healthprobeinterval": "100ms"})
    proc = ServerProcess(config, tmp_path).start()
    try:
        wait_for(lambda: health_of(proc.target) == "SERVING", timeout=10)
        redis_own.stop()
        wait_for(lambda: health_of(proc.target) == "NOT_SERVING", timeout=10)
        redis_own.restart()
        wait_for(lambda: health_of(proc.target) == "SERVING", timeout=15)
        wait_for(lambda: "is back after failing" in proc.output, timeout=10)
    finally:
        proc.stop()
