"""The Redis cache's near cache as Prometheus families, read at scrape time.

The counters are the near cache's own (:class:`~descriptor_server.caches.redis.near.NearStats`,
with its settler's :class:`~descriptor_server.caches.redis.nearlease.SettleStats`); the
server registers this collector with :meth:`.metrics.ServerMetrics.register` when the
Redis cache has a near cache.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..caches.redis import nearlease
from ..caches.redis.near import NearStats


class NearCacheCollector(Collector):
    """The near cache's counters as Prometheus families, read at scrape time."""

    def __init__(self, source: Callable[[], NearStats]) -> None:
        self.source = source

    def describe(self) -> Iterable[Metric]:
        return list(self.collect())

    def collect(self) -> Iterator[Metric]:
        s = self.source()
        for name, value, doc in (
            ("hits", s.hits, "Lookups the Redis cache answered from its near cache (also counted in hits)."),
            ("invalidations", s.invalidations, "Keys Redis reported changed (each evicts what depends on it)."),
            ("flushes", s.flushes, "Times the near cache was emptied (connection lost or set up, server flush)."),
            ("losses", s.losses, "Times the invalidation connection was lost."),
            ("lease_lapses", s.lapses, "Times the lease ran out here (stopped, cut off from Redis) and was flushed."),
            ("lease_evictions", s.evicted, "Times a Clear took the lease away (barriers not acked in time)."),
            ("barrier_acks_sent", s.acks, "Barriers of Clears (any process's) acked by this near cache."),
        ):
            yield CounterMetricFamily(f"descriptor_cache_near_{name}", doc, value=value)
        settle = s.settle or nearlease.SettleStats()
        for name, value, doc in (
            ("barriers", settle.barriers, "Barriers this process's Clears set (some near cache was live)."),
            ("barrier_acks", settle.acks, "Acks this process's barriers received."),
            (
                "barrier_waited_out",
                settle.waited_out,
                "Near caches a barrier stopped waiting for when their lease ran out (no ack).",
            ),
            ("barrier_evictions", settle.evictions, "Near caches a barrier evicted (renewed without acking)."),
            ("barrier_failures", settle.failures, "Barriers Redis could not run (the lease was waited instead)."),
        ):
            yield CounterMetricFamily(f"descriptor_cache_near_{name}", doc, value=value)
        yield GaugeMetricFamily("descriptor_cache_near_entries", "Entries held in the near cache.", s.entries)
        yield GaugeMetricFamily(
            "descriptor_cache_near_live",
            "1 while invalidation tracking is set up (near cache in use).",
            float(s.live),
        )


__all__ = ["NearCacheCollector"]
