"""The ``none`` cache: remembers nothing, so every Stat is answered by the backend."""

from __future__ import annotations

from collections.abc import Sequence

from descriptor_client.descriptor import Descriptor
from descriptor_client.errors import BlobUnknownError

from . import Taken
from .validation import check_key, check_set


class NoneCache:
    """A cache that holds nothing; it still validates its input like every cache."""

    async def stat(self, digest: str, repository: str = "") -> Descriptor:
        check_key(digest, repository)
        raise BlobUnknownError.of(digest)

    async def stat_many(self, digests: Sequence[str], repository: str = "") -> list[Descriptor | None]:
        return [None] * len(digests)

    async def set_descriptor(self, digest: str, descriptor: Descriptor, repository: str = "") -> None:
        check_set(digest, descriptor, repository)

    async def token(self, fenced: Sequence[str] = ()) -> tuple[int, bool]:
        return 0, False  # nothing is kept, so nothing can be stale

    async def fill(self, digest: str, descriptor: Descriptor, repository: str, token: int) -> bool:
        check_set(digest, descriptor, repository)
        return False  # nothing is kept

    async def invalidate(self, digest: str, repository: str = "") -> tuple[bool, int]:
        check_key(digest, repository)
        return False, 0

    async def clear(self, digest: str, repository: str = "") -> None:
        check_key(digest, repository)
        raise BlobUnknownError.of(digest)

    async def restore(self, digest: str, taken: Taken, epoch: int) -> bool:
        return False

    async def settle(self, digest: str) -> None:
        return None

    async def close(self) -> None:
        return None
