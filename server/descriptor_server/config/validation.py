"""Cross-field and value checks of a loaded configuration, each naming its key."""

from __future__ import annotations

import re

from .error import ConfigError
from .sections import BACKENDS, CACHES, SIGNING_ALGORITHMS, Config, RedisConfig, TokenAuthConfig


def check_workers(config: Config) -> None:
    """Refuse workers that would disagree: each has its own in-memory cache, and a Clear
    reaches one worker only, so the others would keep answering the deleted blob."""
    storage = config.storage
    if config.grpc.workers > 1 and storage.cache.blobdescriptor == "inmemory" and storage.delete.enabled:
        raise ConfigError(
            "grpc.workers",
            f"{config.grpc.workers} workers with storage.cache.blobdescriptor inmemory and storage.delete.enabled:"
            " a Clear would reach one worker's cache only (use the redis cache, one worker, or disable deletion)",
        )


_HOSTPORT = re.compile(r"(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]*):(\d{1,5})")


def check_address(value: str, path: str, *, allow_empty: bool = False) -> None:
    """Refuse anything but ``host:port`` (``[v6]:port``; port 0 picks a free one)."""
    if allow_empty and not value:
        return
    m = _HOSTPORT.fullmatch(value)
    if m is None or int(m.group(1)) > 65535:
        raise ConfigError(path, f"invalid address {value!r} (want host:port)")


def validate_redis(redis: RedisConfig) -> None:
    """The ``redis`` section's cross-field checks (also run by the redis cache itself)."""
    if len(redis.addrs) > 1 and not redis.mastername and redis.db != 0:
        raise ConfigError("redis.db", "must be 0 with Redis Cluster (several addrs)")
    for key in ("dialtimeout", "readtimeout", "writetimeout"):
        if getattr(redis, key) <= 0:
            raise ConfigError(f"redis.{key}", "must be > 0")
    tls = redis.tls
    if not tls.enabled and (tls.certificate or tls.key or tls.rootcas):
        raise ConfigError("redis.tls.enabled", "must be true when certificate, key or rootcas are set")
    if bool(tls.certificate) != bool(tls.key):
        raise ConfigError("redis.tls", "certificate and key go together")
    if redis.nearcache.size < 0:
        raise ConfigError("redis.nearcache.size", "must be >= 0 (0 turns the near cache off)")
    if not 0.1 <= redis.nearcache.lease <= 60:
        raise ConfigError("redis.nearcache.lease", "must be between 100ms and 60s")


def validate(config: Config) -> None:
    """Cross-field and value checks, each naming its key."""
    storage = config.storage
    configured = [name for name in BACKENDS if getattr(storage, name) is not None]
    if len(configured) > 1:
        raise ConfigError("storage", f"more than one backend configured: {', '.join(configured)}")
    cache = storage.cache
    if cache.blobdescriptor not in CACHES:
        raise ConfigError(
            "storage.cache.blobdescriptor",
            f"unknown cache type {cache.blobdescriptor!r} (want {', '.join(CACHES)})",
        )
    if cache.blobdescriptorsize < 0:
        raise ConfigError("storage.cache.blobdescriptorsize", "must be >= 0 (0 = unbounded)")
    if cache.revalidaterate < 0:
        raise ConfigError("storage.cache.revalidaterate", "must be >= 0 (0 = no limit)")
    if storage.maxinflight < 0:
        raise ConfigError("storage.maxinflight", "must be >= 0 (0 = unbounded)")
    if storage.maxpending < 0:
        raise ConfigError("storage.maxpending", "must be >= 0 (0 = no read waits: beyond maxinflight, refused)")
    if storage.registry is not None and not storage.registry.url:
        raise ConfigError("storage.registry.url", "required")
    if storage.descriptorservice is not None and not storage.descriptorservice.target:
        raise ConfigError("storage.descriptorservice.target", "required")
    if storage.s3 is not None and not storage.s3.bucket:
        raise ConfigError("storage.s3.bucket", "required")
    if cache.blobdescriptor == "redis":
        if not config.redis.addrs:
            raise ConfigError("redis.addrs", "at least one address is required for the redis cache")
        for i, addr in enumerate(config.redis.addrs):
            check_address(addr, f"redis.addrs[{i}]")
        validate_redis(config.redis)
    if config.redis.db < 0:
        raise ConfigError("redis.db", "must be >= 0")
    if config.redis.poolsize < 1:
        raise ConfigError("redis.poolsize", "must be >= 1")
    if config.redis.maxidleconns < 0:
        raise ConfigError("redis.maxidleconns", "must be >= 0 (0 = no limit)")
    if config.redis.nearcache.size < 0:
        raise ConfigError("redis.nearcache.size", "must be >= 0 (0 turns the near cache off)")
    if not 0.1 <= config.redis.nearcache.lease <= 60:
        raise ConfigError("redis.nearcache.lease", "must be between 100ms and 60s")
    grpc = config.grpc
    check_address(grpc.addr, "grpc.addr")
    check_address(grpc.healthaddr, "grpc.healthaddr", allow_empty=True)
    if grpc.maxbatch < 1:
        raise ConfigError("grpc.maxbatch", "must be >= 1")
    if grpc.maxrecvmsgsize < 1024:
        raise ConfigError("grpc.maxrecvmsgsize", "must be >= 1024")
    if grpc.maxconcurrentcalls < 0:
        raise ConfigError("grpc.maxconcurrentcalls", "must be >= 0 (0 = unlimited)")
    if grpc.requesttimeout < 0:
        raise ConfigError("grpc.requesttimeout", "must be >= 0 (0 = no bound)")
    if grpc.maxconnections < 0:
        raise ConfigError("grpc.maxconnections", "must be >= 0 (0 = no bound)")
    if grpc.maxstreams < 0:
        raise ConfigError("grpc.maxstreams", "must be >= 0 (0 = grpc's own, unbounded)")
    if grpc.maxmetadatasize < 1024:
        raise ConfigError("grpc.maxmetadatasize", "must be >= 1024")
    if grpc.keepalive.time <= 0:
        raise ConfigError("grpc.keepalive.time", "must be > 0")
    if grpc.keepalive.timeout <= 0:
        raise ConfigError("grpc.keepalive.timeout", "must be > 0")
    if grpc.keepalive.maxpingstrikes < 0:
        raise ConfigError("grpc.keepalive.maxpingstrikes", "must be >= 0 (0 = no strike allowed)")
    if grpc.workers < 1:
        raise ConfigError("grpc.workers", "must be >= 1")
    check_workers(config)
    if bool(grpc.tls.certificate) != bool(grpc.tls.key):
        raise ConfigError("grpc.tls", "certificate and key go together")
    if grpc.tls.clientcas and not grpc.tls.certificate:
        raise ConfigError("grpc.tls.clientcas", "needs grpc.tls.certificate and grpc.tls.key")
    for i, token in enumerate(config.auth.tokens):
        if token.scope not in ("read", "write"):
            raise ConfigError(f"auth.tokens[{i}].scope", f"unknown scope {token.scope!r} (want read or write)")
        if not re.fullmatch(r"[0-9a-f]{64}", token.sha256):
            raise ConfigError(f"auth.tokens[{i}].sha256", "want the 64 lowercase hex of the token's SHA-256")
    if config.auth.token is not None:
        validate_token_auth(config.auth.token)
    check_address(config.http.debug.addr, "http.debug.addr", allow_empty=True)
    if config.http.debug.prometheus.enabled and not config.http.debug.addr:
        raise ConfigError("http.debug.addr", "required when http.debug.prometheus.enabled is true")
    if not config.http.debug.prometheus.path.startswith("/"):
        raise ConfigError("http.debug.prometheus.path", "must start with /")
    healthpath = config.http.debug.healthpath
    if healthpath and not healthpath.startswith("/"):
        raise ConfigError("http.debug.healthpath", "must start with / (or be empty: no HTTP health path)")
    if healthpath and healthpath == config.http.debug.prometheus.path and config.http.debug.prometheus.enabled:
        raise ConfigError("http.debug.healthpath", "must differ from http.debug.prometheus.path")
    if config.log.level.lower() not in ("debug", "info", "warn", "warning", "error"):
        raise ConfigError("log.level", f"unknown level {config.log.level!r} (want debug, info, warn or error)")
    if config.log.audit not in ("auto", "on", "off"):
        raise ConfigError("log.audit", f"unknown value {config.log.audit!r} (want auto, on or off)")
    if config.log.formatter not in ("text", "json"):
        raise ConfigError("log.formatter", f"unknown formatter {config.log.formatter!r} (want text or json)")


def validate_token_auth(token: TokenAuthConfig) -> None:
    """``auth.token``: what distribution requires of it, each check naming its key."""
    for key in ("realm", "service", "issuer"):
        if not getattr(token, key):
            raise ConfigError(f"auth.token.{key}", "required with token auth")
    if not token.rootcertbundle and not token.jwks:
        raise ConfigError("auth.token", "token auth needs rootcertbundle or jwks (the keys tokens are signed with)")
    for i, alg in enumerate(token.signingalgorithms):
        if alg not in SIGNING_ALGORITHMS:
            raise ConfigError(
                f"auth.token.signingalgorithms[{i}]",
                f"unsupported signing algorithm {alg!r} (want {', '.join(SIGNING_ALGORITHMS)})",
            )
    if not token.globalaccess.type or not token.globalaccess.name:
        raise ConfigError("auth.token.globalaccess", "type and name are required")
    if token.cachesize < 0:
        raise ConfigError("auth.token.cachesize", "must be >= 0 (0 = no cache)")
