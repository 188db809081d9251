"""Wrappers: what stands around the real cache and backend, and the one place that stacks them.

Each wrapper implements the same protocol as what it wraps (:class:`~.core.cache.Cache`
or :class:`~.core.backend.Backend`) and keeps it as ``inner``
(:func:`.traces.innermost` finds the real component again):

- :mod:`.bounds`: the backend's deadline and bounded queue (``storage.backendtimeout``,
  ``storage.maxinflight``, ``storage.maxpending``);
- :mod:`.watch`: a shared cache's health watch (one line when it fails and when it is
  back, the health probe, the start-up check);
- :mod:`.traces`: a span per call (tracing on), the backend's request-duration
  histogram and its recovery line.

:func:`stack` puts them on, in this order (outermost first)::

    cache:    WatchedCache (shared caches: redis)  ->  TracedCache (tracing on)  ->  the cache
    backend:  BoundedBackend (a bound set)  ->  TracedBackend (always)  ->  the backend

So the watch sees every failure of a shared cache, traced or not; the backend's spans
and histogram time the calls it really makes (a call refused or timed out by its bounds
never reaches it), and its bounds hold whatever is traced.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config import StorageConfig
from ..core.backend import Backend
from ..core.cache import Cache
from . import bounds
from .traces import BackendObserver, TracedBackend, TracedCache
from .watch import WatchedCache

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer


def stack(
    cache: Cache,
    backend: Backend,
    *,
    cache_kind: str,
    watch: bool,
    storage: StorageConfig,
    tracer: Tracer | None = None,
    observe_backend: BackendObserver | None = None,
) -> tuple[Cache, Backend]:
    """The cache and the backend in their wrappers, in the order the module docstring gives.

    ``cache_kind`` names the cache (its spans, its health lines); ``watch`` puts a shared
    cache under the health watch; ``storage`` holds the backend's name and bounds.
    """
    if tracer is not None:
        cache = TracedCache(cache, cache_kind, tracer)
    if watch:
        cache = WatchedCache(cache, f"{cache_kind} cache")
    traced: Backend = TracedBackend(backend, storage.backend, tracer=tracer, observe=observe_backend)
    return cache, bounds.from_config(traced, storage)


__all__ = ["stack"]
