"""Composition: config -> cache + backend (from the registry) -> wrappers -> statter.

The components are found by name in :mod:`.components`; :func:`build_statter` puts
them in their wrappers (:func:`descriptor_server.wrappers.stack`) under the statter.
"""

from __future__ import annotations

from ..config import Config
from ..core.revalidate import DEFAULT_CAPACITY, Revalidator
from ..core.statter import CachedBlobStatter
from ..observability.metrics import RedisObserver
from ..observability.tracing import Tracing
from ..wrappers import stack
from ..wrappers.traces import BackendObserver
from .components import CACHES, build_backend, build_cache


def build_revalidator(config: Config) -> Revalidator | None:
    """``storage.cache.revalidate``: keys tracked as many as the in-memory cache holds."""
    cache = config.storage.cache
    if cache.revalidate <= 0 or cache.blobdescriptor == "none":
        return None
    bounded = cache.blobdescriptor == "inmemory" and cache.blobdescriptorsize > 0
    capacity = cache.blobdescriptorsize if bounded else DEFAULT_CAPACITY
    return Revalidator(cache.revalidate, cache.revalidaterate, capacity)


def build_statter(
    config: Config,
    *,
    observe: RedisObserver | None = None,
    observe_backend: BackendObserver | None = None,
    tracing: Tracing | None = None,
) -> CachedBlobStatter:
    """The statter over the configured cache and backend, in their wrappers.

    The components come from the one registry (:mod:`.components`), the wrappers from
    :func:`descriptor_server.wrappers.stack`, which documents their order.
    """
    kind = config.storage.cache.blobdescriptor
    cache, backend = stack(
        build_cache(config, observe=observe),
        build_backend(config),
        cache_kind=kind,
        watch=CACHES[kind].shared,
        storage=config.storage,
        tracer=tracing.tracer if tracing is not None else None,
        observe_backend=observe_backend,
    )
    return CachedBlobStatter(
        cache,
        backend,
        delete_enabled=config.storage.delete.enabled,
        max_batch=config.grpc.maxbatch,
        revalidator=build_revalidator(config),
    )


async def check_components(config: Config) -> None:
    """Build (then close) the cache and backend, so ``--check-config`` refuses what start would.

    Nothing connects here: the checks are the ones each component makes of its section.
    """
    statter = build_statter(config)
    await statter.close()


__all__ = ["build_revalidator", "build_statter", "check_components"]
