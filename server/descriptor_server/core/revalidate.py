"""Bounded staleness against the backend (``storage.cache.revalidate``).

A cache cannot see storage change behind its back: distribution's ``registry
garbage-collect`` on shared storage, or a registry 2.8 delete that left its membership
in a shared Redis. With ``storage.cache.revalidate`` set (one minute by default), an
entry found on a hit that was last confirmed by the backend longer ago than the interval
(an entry first seen by this process counts as confirmed when first seen) is checked again
(the statter's ``revalidate``): the hit is
answered from the cache meanwhile (stale-while-revalidate), one check of a key runs at a
time, at most ``storage.cache.revalidaterate`` revalidations start per second, and an entry
the backend no longer holds is removed from the cache with Clear's semantics (so every
registry sharing that Redis is healed too). The guarantee: a blob removed behind the
cache's back stops being answered within the interval plus one backend round trip of
its first hit after the interval (two intervals for an entry this process first saw
already stale; plus the rate limit's wait under a flood of stale entries).

:class:`Revalidator` keeps when each key was last confirmed, bounded: past
``capacity`` keys the least recently confirmed is forgotten (it is then due again).
"""

from __future__ import annotations

import time
from collections.abc import Callable

Key = tuple[str, str]  # (digest, repository)

#: Keys tracked when the cache itself has no bound (or is not the in-memory cache).
DEFAULT_CAPACITY = 100_000


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


__all__ = ["DEFAULT_CAPACITY", "Key", "Revalidator"]
