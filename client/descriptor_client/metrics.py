"""What ``GetMetrics`` answers: :class:`Metrics`, the cached statter's counters."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Metrics:
    """The cached statter's counters since the server started.

    ``requests`` counts Stat lookups (each digest of a BatchStat counts), ``hits`` the
    lookups the cache answered, ``misses`` those it did not, ``errors`` every cache
    call that failed. With ``--workers`` they are the counters of worker ``worker`` (of
    ``workers``), the one that answered; ``workers == 1`` means the whole server.
    """

    requests: int
    hits: int
    misses: int
    errors: int
    worker: int = 0
    workers: int = 1


__all__ = ["Metrics"]
