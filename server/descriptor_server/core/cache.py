"""The :class:`Cache` protocol: what the statter asks of a cache (implementations: ``caches/``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from descriptor_client.descriptor import Descriptor
from descriptor_client.protocol import BlobDescriptorService


@runtime_checkable
class Cache(BlobDescriptorService, Protocol):
    """A cache: the service protocol, a batch lookup, and ``close``."""

    async def stat_many(self, digests: Sequence[str], repository: str = "") -> list[Descriptor | None]:
        """Look up many digests in one (valid) scope: each descriptor, or ``None`` where unknown.

        A digest that is not valid is reported unknown (the statter validates first). Raises
        only when the cache itself fails, for the whole batch.
        """
        ...

    async def fill(self, digest: str, descriptor: Descriptor, repository: str = "") -> bool:
        """Write back what the backend answered after a miss (the statter's write-back).

        As :meth:`set_descriptor`, except that a cache shared between processes skips
        the write when a Clear of the digest may have happened while the backend was
        read (a Clear in another process, which this process's flights cannot see);
        False when it skipped. A cache of this process only writes, as set_descriptor.
        """
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


__all__ = ["Cache"]
