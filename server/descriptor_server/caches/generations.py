"""The epoch and per-digest clear generations of a cache kept in this process.

:class:`Generations` is the in-process form of the rule every cache follows (see
:mod:`descriptor_server.caches`): ``epoch`` only grows; ``cleared(d)`` is the epoch of
``d``'s last invalidation. The records are bounded: past ``max_records`` the oldest is
forgotten and the *floor* rises to its epoch, and a digest without a record counts as
cleared at the floor. So forgetting can only over-fence (a write-back refused that
would have been right), never under-fence.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

#: Invalidation records kept (about 100 bytes each); beyond, the floor rises.
MAX_RECORDS = 65536


class Generations:
    """``epoch``, ``cleared(d)`` with a floor, and the fence's time window."""

    __slots__ = ("_records", "clock", "epoch", "fence_ttl", "floor", "max_records")

    def __init__(
        self, fence_ttl: float, max_records: int = MAX_RECORDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.epoch = 0
        self.floor = 0
        self.fence_ttl = fence_ttl
        self.max_records = max(1, max_records)
        self.clock = clock
        # digest -> (epoch of its last invalidation, when its fence falls); oldest first.
        self._records: dict[str, tuple[int, float]] = {}

    def cleared(self, digest: str) -> int:
        record = self._records.get(digest)
        return self.floor if record is None else record[0]

    def allows(self, digests: Iterable[str], token: int) -> bool:
        """True if none of ``digests`` was invalidated after ``token`` was read."""
        return all(self.cleared(d) <= token for d in digests)

    def fenced(self, digests: Iterable[str]) -> bool:
        """True if any of ``digests`` was invalidated less than ``fence_ttl`` ago."""
        now = self.clock()
        for digest in digests:
            record = self._records.get(digest)
            if record is not None and record[1] > now:
                return True
        return False

    def bump(self, digest: str) -> int:
        """A new epoch, recorded as ``digest``'s last invalidation; returns it."""
        self.epoch += 1
        records = self._records
        records.pop(digest, None)  # re-inserted last: the dict's order is the age order
        records[digest] = (self.epoch, self.clock() + self.fence_ttl)
        if len(records) > self.max_records:
            oldest = next(iter(records))
            self.floor = max(self.floor, records.pop(oldest)[0])
        return self.epoch

    def __len__(self) -> int:
        return len(self._records)


__all__ = ["MAX_RECORDS", "Generations"]
