"""Bounded staleness against the backend (``storage.cache.revalidate``).

A cache cannot see storage change behind its back: distribution's ``registry
garbage-collect`` on shared storage, or a registry 2.8 delete that left its membership
in a shared Redis. With ``storage.cache.revalidate`` set (one minute by default), a hit
on an entry last confirmed by the backend longer ago than the interval (an entry first
seen by this process counts as confirmed when first seen) is checked against the backend
*before* it is answered (the statter's ``_check``): concurrent hits of the key share one
check, at most ``storage.cache.revalidaterate`` checks start per second (a hit over the
limit is answered from the cache and checked on a later hit), and an entry the backend
no longer holds is removed from the cache with Clear's semantics (so every registry
sharing that Redis is healed too) and the hit answers BLOB_UNKNOWN. A backend that fails,
or has not answered within :data:`CHECK_WAIT`, leaves the hit answered from the cache
(not known gone: a cache stays available while storage is briefly down). The guarantee:
once the interval has passed since an entry was last confirmed, its next hit is answered
as the backend answers (for an entry this process first saw already stale, the first hit
one interval after it was first seen; under a flood of due entries, after the rate limit's
wait; with a backend slower than ``CHECK_WAIT``, once the check has ended).

:class:`Revalidator` keeps when each key was last confirmed, bounded: past
``capacity`` keys the least recently confirmed is forgotten (it is then due again).
"""

from __future__ import annotations

import time
from collections.abc import Callable

Key = tuple[str, str]  # (digest, repository)

#: Keys tracked when the cache itself has no bound (or is not the in-memory cache).
DEFAULT_CAPACITY = 100_000

#: Seconds a due hit waits for its check before it is answered from the cache. A backend
#: Stat takes well under a millisecond to a few (a registry backend over the network):
#: one second is far beyond a healthy check, and well inside the clients' default
#: deadline (10 s), so a hung storage (``storage.backendtimeout`` 30 s) never turns hits
#: into timeouts.
CHECK_WAIT = 1.0


class Revalidator:
    """When each cached key was last confirmed by the backend, and the rate limit."""

    def __init__(
        self,
        interval: float,
        rate: int,
        capacity: int = DEFAULT_CAPACITY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        self.rate = rate
        self.capacity = max(1, capacity)
        self.clock = clock
        self._confirmed: dict[Key, float] = {}
        self._tokens = float(rate)
        self._filled = clock()

    def due(self, key: Key) -> bool:
        """Whether the entry for ``key`` should be checked again: confirmed too long ago.

        A key seen for the first time (written by another process, cached before this
        one started, or forgotten past ``capacity``) counts as confirmed now: its check
        comes one interval later. Checking it at once would send every first hit of a
        shared cache to the backend, and would remove entries primed with SetDescriptor
        the moment they are first read (a backend that does not hold them yet is not
        a backend that lost them)."""
        at = self._confirmed.get(key)
        if at is None:
            self.confirmed(key)
            return False
        return self.clock() - at >= self.interval

    def confirmed(self, key: Key) -> None:
        """The backend (or a SetDescriptor) has just vouched for ``key``."""
        confirmed = self._confirmed
        confirmed.pop(key, None)  # re-inserted last: the dict's order is the confirmation order
        confirmed[key] = self.clock()
        if len(confirmed) > self.capacity:
            del confirmed[next(iter(confirmed))]

    def forget(self, key: Key) -> None:
        self._confirmed.pop(key, None)

    def allow(self) -> bool:
        """Take one token from the per-second budget (always true with rate 0)."""
        if self.rate <= 0:
            return True
        now = self.clock()
        self._tokens = min(float(self.rate), self._tokens + (now - self._filled) * self.rate)
        self._filled = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def __len__(self) -> int:
        return len(self._confirmed)


__all__ = ["CHECK_WAIT", "DEFAULT_CAPACITY", "Key", "Revalidator"]
