"""The :class:`Backend` protocol: the source of truth behind the cache.

Every backend (:mod:`descriptor_server.backends`) implements :class:`Backend`: the service protocol, plus
``supports_clear(repository)`` (whether Clear can work in that scope, asked before the
cache changes), ``probe()`` (a cheap health check: the server calls it every
``grpc.healthprobeinterval`` and reports the service NOT_SERVING while it raises) and
``close()``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from descriptor_client.protocol import BlobDescriptorService


@runtime_checkable
class Backend(BlobDescriptorService, Protocol):
    """A backend: the service protocol, plus what the statter and the health probe ask."""

    def supports_clear(self, repository: str) -> bool:
        """True if Clear can work in this scope (checked before the cache changes)."""
        ...

    async def probe(self) -> None:
        """Return when the backend can serve; raise (BackendUnavailableError) when not."""
        ...

    async def close(self) -> None:
        """Release connections and threads."""
        ...


__all__ = ["Backend"]
