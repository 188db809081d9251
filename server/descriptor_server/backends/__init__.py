"""Backends: the source of truth behind the cache, one module each.

Every backend implements the BlobDescriptorService protocol plus
``supports_clear(repository)`` (whether Clear can work in that scope) and ``close()``.
A backend may also have ``async def probe(self) -> None`` (see :class:`Probed`): the
server calls it every ``grpc.healthprobeinterval`` and reports the service
NOT_SERVING while it raises.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from descriptor_client.protocol import BlobDescriptorService


@runtime_checkable
class Backend(BlobDescriptorService, Protocol):
    """A backend: the service protocol, plus what the statter must know before Clear."""

    def supports_clear(self, repository: str) -> bool:
        """True if Clear can work in this scope (checked before the cache changes)."""
        ...

    async def close(self) -> None:
        """Release connections and threads."""
        ...


@runtime_checkable
class Probed(Protocol):
    """An optional backend capability: a cheap health check."""

    async def probe(self) -> None:
        """Return when the backend can serve; raise (BackendUnavailableError) when not."""
        ...
