"""The :class:`Cache` protocol: what the statter asks of a cache (implementations: ``caches/``).

Clear is final through one mechanism every cache keeps where it is shared (this
process for ``inmemory``, Redis for ``redis``), see docs/reliability.md:

- an *epoch*, a counter that only grows, and per digest the epoch of its last
  invalidation, ``cleared(d)`` (a digest never invalidated, or whose record is gone,
  counts as cleared at a floor that only grows; over-fencing is safe);
- a *token* is the epoch read before the backend is consulted; every write of what the
  backend answered (:meth:`Cache.fill`) is a compare-and-set against it: written only if
  ``cleared(d) <= token`` and ``cleared(descriptor.digest) <= token`` (the alias rule);
- :meth:`Cache.invalidate` bumps the epoch, sets ``cleared(d)`` to it (the *fence*,
  which stands ``fence_ttl`` seconds), and removes the scope's entries, at once;
- :meth:`Cache.settle` returns once no near cache of any process can answer ``d``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from descriptor_client.descriptor import Descriptor
from descriptor_client.protocol import BlobDescriptorService

#: What a Clear took from the cache and may put back if the backend refuses: (descriptor, scope).
Taken = Sequence[tuple[Descriptor, str]]


@runtime_checkable
class Cache(BlobDescriptorService, Protocol):
    """A cache: the service protocol, a batch lookup, the generation rule, and ``close``.

    ``set_descriptor`` writes unconditionally (a test's or an operator's write); the
    statter writes only through :meth:`fill`. ``clear`` is :meth:`invalidate` that
    raises BlobUnknownError when the scope held nothing.

    Optional, found by name: ``peek(digest, repository) -> Descriptor | None``, a
    synchronous lookup of what :meth:`stat` would answer (None: ask :meth:`stat`), with
    no other effect than a stat of it would have, and consistent with
    :meth:`invalidate` (no ``await`` between them in the cache). The in-memory cache
    has it for its memoised hits; a wrapper (tracing) does not, so its spans stay.
    """

    async def stat_many(self, digests: Sequence[str], repository: str = "") -> list[Descriptor | None]:
        """Look up many digests in one (valid) scope: each descriptor, or ``None`` where unknown.

        A digest that is not valid is reported unknown (the statter validates first). Raises
        only when the cache itself fails, for the whole batch.
        """
        ...

    async def token(self, fenced: Sequence[str] = ()) -> tuple[int, bool]:
        """The current epoch (the token of a read about to be made), and whether any of
        ``fenced`` (digests) is fenced now (invalidated less than ``fence_ttl`` ago).
        One round trip on a shared cache."""
        ...

    async def fill(self, digest: str, descriptor: Descriptor, repository: str, token: int) -> bool:
        """Write as :meth:`set_descriptor` does, only if neither ``digest`` nor
        ``descriptor.digest`` was invalidated after ``token`` was read (compare-and-set);
        False when it did not write (or, ``none``, keeps nothing)."""
        ...

    async def invalidate(self, digest: str, repository: str = "") -> tuple[bool, int]:
        """Bump the epoch, fence ``digest`` at it, and remove the scope's entries (a
        repository scope also removes the global entry; the global scope also the global
        entries of the other algorithms' digests stored as aliases of it), as one step
        where the cache allows it. Returns whether the scope held ``digest`` (a repository scope: listed
        it) and the epoch it was fenced at."""
        ...

    async def restore(self, digest: str, taken: Taken, epoch: int) -> bool:
        """Put back what an invalidation at ``epoch`` took (global entry first), only if
        ``digest`` was not invalidated since and no entry of it was written since (so never
        over a concurrent Clear or SetDescriptor). True if it put them back."""
        ...

    async def settle(self, digest: str) -> None:
        """Return once no near cache of any process sharing this cache can answer
        ``digest`` (after an invalidation); at once where there is no near cache."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


__all__ = ["Cache", "Taken"]
