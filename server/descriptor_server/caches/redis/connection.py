"""The Redis cache's connections: topology, TLS, pools with idle limits, from the ``redis:`` section.

Topology follows go-redis's universal rule: ``mastername`` means Sentinel, several
``addrs`` mean Cluster, one means a single server (:func:`from_config`).

Idle limits: distribution 3.x reads ``redis.maxidleconns`` and ``redis.connmaxidletime``
(2.x: ``redis.pool.maxidle`` and ``redis.pool.idletimeout``) as go-redis does:

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
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff

from ...config import ConfigError, RedisConfig, validate_redis
from ...core import loggers
from .cache import DEFAULT_FENCE_TTL, Client, Closer, Observer, RedisCache
from .near import NearCache
from .nearlease import Settler

log = logging.getLogger(loggers.REDIS)

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


# -- from the configuration ------------------------------------------------------------


def _host_port(addr: str, key: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(key, f"invalid address {addr!r} (want host:port)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "127.0.0.1", int(port)


def _tls_kwargs(cfg: RedisConfig) -> dict[str, Any]:
    tls = cfg.tls
    if not tls.enabled:
        return {}
    out: dict[str, Any] = {"ssl": True}
    for name, path in (("certificate", tls.certificate), ("key", tls.key)):
        if path and not Path(path).is_file():
            raise ConfigError(f"redis.tls.{name}", f"no such file: {path}")
    if tls.certificate:
        out["ssl_certfile"] = tls.certificate
        out["ssl_keyfile"] = tls.key
    if tls.rootcas:
        pems = []
        for i, path in enumerate(tls.rootcas):
            try:
                pems.append(Path(path).read_text())
            except OSError as err:
                raise ConfigError(f"redis.tls.rootcas[{i}]", f"cannot read {path}: {err.strerror}") from None
        out["ssl_ca_data"] = "\n".join(pems)
    return out


def from_config(
    cfg: RedisConfig, observe: Observer | None = None, *, fence_ttl: float = DEFAULT_FENCE_TTL
) -> RedisCache:
    """A :class:`RedisCache` for the ``redis:`` section (docs/api.md, Caches and backends; README, Configuration).

    ``fence_ttl``: how long a Clear's fence stands (the app passes ``storage.backendtimeout``
    plus a margin: longer than any backend read).
    """
    if not cfg.addrs:
        raise ConfigError("redis.addrs", "at least one address is required for the redis cache")
    nodes = [_host_port(addr, f"redis.addrs[{i}]") for i, addr in enumerate(cfg.addrs)]
    validate_redis(cfg)
    common: dict[str, Any] = {
        "username": cfg.username or None,
        "password": cfg.password or None,
        "socket_connect_timeout": cfg.dialtimeout,
        "socket_timeout": max(cfg.readtimeout, cfg.writetimeout),
        "decode_responses": True,
        "retry": Retry(NoBackoff(), 0),
        **_tls_kwargs(cfg),
    }

    def make(
        client: Client,
        *,
        cluster: bool = False,
        closers: Sequence[Closer] = (),
        near: NearCache | None = None,
        settler: Settler | None = None,
    ) -> RedisCache:
        return RedisCache(
            client,
            cluster=cluster,
            read_timeout=cfg.readtimeout,
            write_timeout=cfg.writetimeout,
            pool_size=cfg.poolsize,
            observe=observe,
            closers=closers,
            near=near,
            fence_ttl=fence_ttl,
            settler=settler,
        )

    # Idle limits on the data connections only: the near cache's one connection is meant to stay.
    idle: dict[str, Any] = {"max_idle": cfg.maxidleconns, "max_idle_time": cfg.connmaxidletime}
    size = cfg.nearcache.size
    lease = cfg.nearcache.lease
    # The invalidation connection speaks RESP2 (invalidations as Pub/Sub messages); the
    # other one carries the lease and the acks. The settler's: its scripts, and the BLPOP.
    near_kwargs: dict[str, Any] = {"max_connections": 2, "protocol": 2}

    if cfg.mastername:
        sentinel_kwargs = {k: v for k, v in common.items() if k not in ("username", "password", "decode_responses")}
        sentinel = Sentinel(nodes, sentinel_kwargs=sentinel_kwargs, db=cfg.db, **common)
        master = sentinel.master_for(
            cfg.mastername, connection_pool_class=IdleLimitedSentinelPool, max_connections=cfg.poolsize, **idle
        )
        near = None
        closers: list[Closer] = []
        if size:
            # Its own client and pool: a Sentinel-managed connection to the current master.
            near_client = sentinel.master_for(cfg.mastername, **near_kwargs)
            near_pool = near_client.connection_pool
            near = NearCache(
                size,
                near_pool,
                master_address=near_pool.get_master_address,
                setup_timeout=cfg.dialtimeout,
                lease=lease,
            )
            closers.append(near_client.aclose)
        settler = Settler(sentinel.master_for(cfg.mastername, **near_kwargs), fallback=lease, timeout=cfg.dialtimeout)

        async def close_sentinels() -> None:
            for s in sentinel.sentinels:
                await s.aclose()

        closers.append(close_sentinels)
        return make(master, closers=closers, near=near, settler=settler)
    if len(nodes) > 1:
        client = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in nodes],
            max_connections=cfg.poolsize,
            **common,
        )
        if cfg.maxidleconns or cfg.connmaxidletime != RedisConfig.connmaxidletime:
            log.info(
                "redis.maxidleconns and redis.connmaxidletime: not applied on Redis Cluster (redis-py's own pools)"
            )
        if size:
            log.info(
                "redis.nearcache: off on Redis Cluster (invalidation tracking is per node and "
                "not followed across slot moves here); every Stat asks Redis"
            )
        return make(client, cluster=True)
    host, port = nodes[0]
    pool = IdleLimitedPool(
        host=host, port=port, db=cfg.db, max_connections=cfg.poolsize, **idle, **_pool_kwargs(common)
    )
    near = None
    if size:
        near_pool = ConnectionPool(host=host, port=port, db=cfg.db, **near_kwargs, **_pool_kwargs(common))
        near = NearCache(size, near_pool, setup_timeout=cfg.dialtimeout, lease=lease)
    settle_pool = ConnectionPool(host=host, port=port, db=cfg.db, **near_kwargs, **_pool_kwargs(common))
    settler = Settler(Redis(connection_pool=settle_pool), fallback=lease, timeout=cfg.dialtimeout)
    return make(Redis(connection_pool=pool), near=near, settler=settler)


def _pool_kwargs(common: dict[str, Any]) -> dict[str, Any]:
    """Connection-pool keyword arguments: TLS is a connection class, not a flag, there."""
    kwargs = dict(common)
    if kwargs.pop("ssl", False):
        from redis.asyncio.connection import SSLConnection

        kwargs["connection_class"] = SSLConnection
    return kwargs
