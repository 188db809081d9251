"""The one table of the server's logger names.

A logger's name is in every log line (``<time> <LEVEL> <logger>: ...`` and the JSON
``logger`` field), and operators filter and route on it, so the names are pinned here
rather than derived from where a module happens to live (``logging.getLogger(__name__)``
would rename a logger whenever its module moves). Every module of the server takes its
logger from this table; ``tests/unit/test_layering.py`` checks that none calls
``logging.getLogger`` with anything else.
"""

from __future__ import annotations

#: Server lifecycle, tracing set-up, workers, health, the metrics endpoint, backend recovery lines.
SERVER = "descriptor_server"
#: One line per failed call (info), per call (debug).
CALLS = "descriptor_server.calls"
#: Every refusal, and every SetDescriptor and Clear.
AUDIT = "descriptor_server.audit"
#: Registry-token keys: loads, reloads, rejected keys.
AUTH = "descriptor_server.auth"
#: The servicer: unexpected errors in a handler.
SERVICE = "descriptor_server.service"
#: The cached statter: write-backs, revalidation.
STATTER = "descriptor_server.statter"
#: A shared cache's failures and returns (the health watch), the start-up check.
CACHE = "descriptor_server.cache"
#: The Redis cache.
REDIS = "descriptor_server.caches.redis"
#: The Redis cache's near cache (client-side caching; its module is now caches/redis/near.py,
#: the name is the one operators already filter on).
NEAR_CACHE = "descriptor_server.caches.nearcache"
#: The backend bounds (timeout, in-flight limit).
BOUNDS = "descriptor_server.backends.bounded"
#: The filesystem backend.
FILESYSTEM = "descriptor_server.backends.filesystem"
#: distribution's on-disk layout (filesystem and S3 backends).
LAYOUT = "descriptor_server.backends.layout"
#: The registry backend.
REGISTRY = "descriptor_server.backends.registry"
#: The S3 backend.
S3 = "descriptor_server.backends.s3"
#: The descriptor-service backend.
DESCRIPTOR_SERVICE = "descriptor_server.backends.descriptorservice"

#: Every logger name the server uses (name -> what logs on it), for docs and tests.
LOGGERS: dict[str, str] = {
    SERVER: "server lifecycle, tracing set-up, workers, health, metrics endpoint, backend recovery",
    CALLS: "one line per failed call (info) or per call (debug)",
    AUDIT: "refusals, and every SetDescriptor and Clear",
    AUTH: "registry-token keys",
    SERVICE: "the gRPC servicer",
    STATTER: "the cached statter",
    CACHE: "a shared cache's failures and returns",
    REDIS: "the Redis cache",
    NEAR_CACHE: "the Redis cache's near cache",
    BOUNDS: "the backend bounds",
    FILESYSTEM: "the filesystem backend",
    LAYOUT: "distribution's storage layout",
    REGISTRY: "the registry backend",
    S3: "the S3 backend",
    DESCRIPTOR_SERVICE: "the descriptor-service backend",
}

__all__ = [
    "AUDIT",
    "AUTH",
    "BOUNDS",
    "CACHE",
    "CALLS",
    "DESCRIPTOR_SERVICE",
    "FILESYSTEM",
    "LAYOUT",
    "LOGGERS",
    "NEAR_CACHE",
    "REDIS",
    "REGISTRY",
    "S3",
    "SERVER",
    "SERVICE",
    "STATTER",
]
