"""The one registry of caches and backends: each name the config accepts, and its factory.

``storage.cache.blobdescriptor`` names a cache of :data:`CACHES`; the one section of
``storage`` that is set names a backend of :data:`BACKENDS` (``filesystem`` when none
is). A factory builds the bare component from the config: nothing connects here, and
the wrappers are put on by :func:`descriptor_server.wrappers.stack`. Each factory
imports its module when it is called, so a server that does not use Redis, S3 or the
registry backend never imports them (nor their dependencies).

The names are the config's (:data:`descriptor_server.config.CACHES`,
:data:`descriptor_server.config.BACKENDS`); ``tests/unit/test_layering.py`` checks that the
two lists agree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from ..config import Config, ConfigError, StorageConfig
from ..core.backend import Backend
from ..core.cache import Cache
from ..observability.metrics import RedisObserver

T = TypeVar("T")


def fence_ttl(config: Config) -> float:
    """How long a Clear's fence stands in a shared cache: longer than any backend read.

    A read is bounded by ``storage.backendtimeout`` (waiting included) and its write-back
    by ``redis.writetimeout``; without a backend timeout, ten minutes.
    """
    timeout = config.storage.backendtimeout
    return timeout + config.redis.writetimeout + 10.0 if timeout > 0 else 600.0


# -- caches ---------------------------------------------------------------------------


def _inmemory(config: Config, observe: RedisObserver | None) -> Cache:
    from ..caches.inmemory import InMemoryCache

    return InMemoryCache(config.storage.cache.blobdescriptorsize, fence_ttl=fence_ttl(config))


def _redis(config: Config, observe: RedisObserver | None) -> Cache:
    from ..caches.redis import from_config

    return from_config(config.redis, observe=observe, fence_ttl=fence_ttl(config))


def _none(config: Config, observe: RedisObserver | None) -> Cache:
    from ..caches.none import NoneCache

    # Workers that can clear see each other's Clears in no shared epoch: no read is shared.
    return NoneCache(alone=config.grpc.workers <= 1 or not config.storage.delete.enabled)


@dataclass(frozen=True, slots=True)
class CacheKind:
    """A cache's factory, and whether it is shared between processes (so watched)."""

    build: Callable[[Config, RedisObserver | None], Cache]
    #: Shared with other processes over the network: under the health watch, checked at start.
    shared: bool = False


#: ``storage.cache.blobdescriptor`` -> the cache.
CACHES: dict[str, CacheKind] = {
    "inmemory": CacheKind(_inmemory),
    "redis": CacheKind(_redis, shared=True),
    "none": CacheKind(_none),
}


# -- backends -------------------------------------------------------------------------


def _section(section: T | None, name: str) -> T:
    if section is None:
        raise ConfigError(f"storage.{name}", "missing section")
    return section


def _filesystem(storage: StorageConfig) -> Backend:
    from ..backends.filesystem import FilesystemBackend

    fs = storage.filesystem
    return FilesystemBackend(fs.rootdirectory if fs is not None else "./data")


def _registry(storage: StorageConfig) -> Backend:
    from ..backends.registry import from_config

    return from_config(_section(storage.registry, "registry"))


def _descriptorservice(storage: StorageConfig) -> Backend:
    from ..backends.descriptorservice import from_config

    return from_config(_section(storage.descriptorservice, "descriptorservice"))


def _s3(storage: StorageConfig) -> Backend:
    from ..backends.s3 import from_config

    return from_config(_section(storage.s3, "s3"))


#: The ``storage`` section's name -> the backend.
BACKENDS: dict[str, Callable[[StorageConfig], Backend]] = {
    "filesystem": _filesystem,
    "registry": _registry,
    "descriptorservice": _descriptorservice,
    "s3": _s3,
}


def build_cache(config: Config, *, observe: RedisObserver | None = None) -> Cache:
    """The bare cache ``storage.cache.blobdescriptor`` names."""
    kind = config.storage.cache.blobdescriptor
    entry = CACHES.get(kind)
    if entry is None:
        raise ConfigError("storage.cache.blobdescriptor", f"unknown cache type {kind!r} (want {', '.join(CACHES)})")
    return entry.build(config, observe)


def build_backend(config: Config) -> Backend:
    """The bare backend of the one ``storage`` section set."""
    storage = config.storage
    name = storage.backend
    factory = BACKENDS.get(name)
    if factory is None:
        raise ConfigError(f"storage.{name}", f"unknown backend (want one of {', '.join(BACKENDS)})")
    try:
        return factory(storage)
    except ImportError as err:
        raise ConfigError(f"storage.{name}", f"backend unavailable: {err}") from None


__all__ = ["BACKENDS", "CACHES", "CacheKind", "build_backend", "build_cache", "fence_ttl"]
