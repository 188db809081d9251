"""The one small protocol every cache, backend, statter and client implements.

``stat`` / ``set_descriptor`` / ``clear`` with the semantics of docs/api.md, Semantics.
An empty ``repository`` is the global scope. Errors are the typed exceptions of
:mod:`descriptor_client.errors`: ``BlobUnknownError`` when the blob is unknown in
the scope, any other exception when the component failed.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from .descriptor import Descriptor


@runtime_checkable
class BlobDescriptorService(Protocol):
    """The asyncio blob descriptor service (caches, backends, the statter, the aio client)."""

    async def stat(self, digest: str, repository: str = "") -> Descriptor:
        """The descriptor of ``digest`` in the scope, or ``BlobUnknownError``."""
        ...

    async def set_descriptor(self, digest: str, descriptor: Descriptor, repository: str = "") -> None:
        """Store ``descriptor`` under ``digest`` in the scope."""
        ...

    async def clear(self, digest: str, repository: str = "") -> None:
        """Remove ``digest`` from the scope, or ``BlobUnknownError`` if it was not there."""
        ...


@runtime_checkable
class SyncBlobDescriptorService(Protocol):
    """The same protocol with blocking calls (the synchronous client)."""

    def stat(self, digest: str, repository: str = "") -> Descriptor:
        """The descriptor of ``digest`` in the scope, or ``BlobUnknownError``."""
        ...

    def set_descriptor(self, digest: str, descriptor: Descriptor, repository: str = "") -> None:
        """Store ``descriptor`` under ``digest`` in the scope."""
        ...

    def clear(self, digest: str, repository: str = "") -> None:
        """Remove ``digest`` from the scope, or ``BlobUnknownError`` if it was not there."""
        ...


__all__ = ["BlobDescriptorService", "SyncBlobDescriptorService"]
