"""Backends: the source of truth behind the cache, one module each.

Every backend implements the BlobDescriptorService protocol plus
``supports_clear(repository)`` (whether Clear can work in that scope) and ``close()``.
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
