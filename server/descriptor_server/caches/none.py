"""The ``none`` cache: remembers nothing, so every Stat is answered by the backend.

It still keeps the epoch of the Clear-is-final rule (:mod:`descriptor_server.core.cache`):
an int that every invalidation bumps. The statter keys its flights (the concurrent
misses sharing one backend read) by the token, so a Stat that starts after a Clear
returned reads a newer token and never joins a read that began before it. A constant
token let it join one (a read of a link the Clear then deleted answered the Stat that
followed the Clear: the lincheck's chained ``inmemory/slow-delete`` history, whose back
service runs this cache).

The epoch is this process's: a Clear served by another worker of the server is not seen
here. So with workers that can clear (``grpc.workers > 1``, deletion on) the cache is not
``alone`` and every token is a new one: no Stat joins another's read, each asks the
backend itself.
"""

from __future__ import annotations

from collections.abc import Sequence

from descriptor_client.descriptor import Descriptor
from descriptor_client.errors import BlobUnknownError

from . import Taken
from .validation import check_key, check_set


class NoneCache:
    """A cache that holds nothing; it still validates its input like every cache."""

    def __init__(self, *, alone: bool = True) -> None:
        #: Bumped by every invalidation: the token of a read that began after it is newer.
        self.epoch = 0
        #: No other process clears the same storage (else every token is new: no sharing).
        self.alone = alone

    async def stat(self, digest: str, repository: str = "") -> Descriptor:
        check_key(digest, repository)
        raise BlobUnknownError.of(digest)

    async def stat_many(self, digests: Sequence[str], repository: str = "") -> list[Descriptor | None]:
        return [None] * len(digests)

    async def set_descriptor(self, digest: str, descriptor: Descriptor, repository: str = "") -> None:
        check_set(digest, descriptor, repository)

    async def token(self, fenced: Sequence[str] = ()) -> tuple[int, bool]:
        if not self.alone:  # another process's Clear bumps nothing here: never share a read
            self.epoch += 1
        return self.epoch, False  # nothing is kept, so nothing can be stale (no fence)

    async def fill(self, digest: str, descriptor: Descriptor, repository: str, token: int) -> bool:
        check_set(digest, descriptor, repository)
        return False  # nothing is kept

    async def invalidate(self, digest: str, repository: str = "") -> tuple[bool, int]:
        check_key(digest, repository)
        self.epoch += 1  # a read from before never serves a Stat from after (see the module)
        return False, self.epoch

    async def clear(self, digest: str, repository: str = "") -> None:
        await self.invalidate(digest, repository)
        raise BlobUnknownError.of(digest)

    async def restore(self, digest: str, taken: Taken, epoch: int) -> bool:
        return False

    async def settle(self, digest: str) -> None:
        return None

    async def close(self) -> None:
        return None
