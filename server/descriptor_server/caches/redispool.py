"""The Redis cache's connection pools, with go-redis's idle limits.

distribution 3.x reads ``redis.maxidleconns`` and ``redis.connmaxidletime`` (2.x:
``redis.pool.maxidle`` and ``redis.pool.idletimeout``) as go-redis does:

- ``maxidleconns``: a connection returned to the pool while that many are already
  idle and open is closed (0 = no limit);
- ``connmaxidletime``: a connection idle longer than this is closed before it is used
  again, and a fresh one opened in its place (0 = never), so a connection a firewall
  or Redis' own ``timeout`` dropped while idle is not the one a call finds broken.

redis-py's pools have neither, so :class:`IdleLimits` adds them to the single-server
pool and to Sentinel's. Cluster's per-node connections are redis-py's own and keep
their defaults (the cache logs that at start when the limits are set).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.asyncio.sentinel import SentinelConnectionPool

_IDLE_SINCE = "_descriptor_idle_since"


class IdleLimits:
    """A pool mixin: ``max_idle`` open idle connections at most, none reused after ``max_idle_time`` s."""

    _available_connections: list[AbstractConnection]

    def __init__(self, *args: Any, max_idle: int = 0, max_idle_time: float = 0.0, **kwargs: Any) -> None:
        self.max_idle = max_idle
        self.max_idle_time = max_idle_time
        super().__init__(*args, **kwargs)

    async def ensure_connection(self, connection: AbstractConnection) -> None:
        idle_since = getattr(connection, _IDLE_SINCE, None)
        if (
            self.max_idle_time > 0
            and idle_since is not None
            and connection.is_connected
            and time.monotonic() - idle_since > self.max_idle_time
        ):
            await _close(connection)  # reconnected below, as a fresh connection
        await super().ensure_connection(connection)  # type: ignore[misc]

    async def release(self, connection: AbstractConnection) -> None:
        setattr(connection, _IDLE_SINCE, time.monotonic())
        await super().release(connection)  # type: ignore[misc]
        if self.max_idle <= 0:
            return
        idle = [c for c in self._available_connections if c.is_connected]
        if len(idle) <= self.max_idle:
            return
        # Take the ones idle longest out of the pool before closing them (no await in
        # between), so no call can pick one up while it closes.
        idle.sort(key=lambda c: getattr(c, _IDLE_SINCE, 0.0))
        extras = idle[: len(idle) - self.max_idle]
        for extra in extras:
            self._available_connections.remove(extra)
        for extra in extras:
            await _close(extra)


async def _close(connection: AbstractConnection) -> None:
    """Close without waiting for the peer: a dropped peer (the case idle limits exist for)
    never answers a TLS close_notify, and the wait would count against the call that
    happens to release or take the connection. A failure to close is not the call's."""
    with contextlib.suppress(Exception):
        await connection.disconnect(nowait=True)


class IdleLimitedPool(IdleLimits, ConnectionPool):
    """A single server's pool with the idle limits."""


class IdleLimitedSentinelPool(IdleLimits, SentinelConnectionPool):
    """A Sentinel-managed master's pool with the idle limits."""
