"""Prometheus metrics of one server, in its own registry (never the global one).

- The cached statter's counters are read at scrape time by :class:`StatterCollector`
  (distribution's names, present at zero from the start, no cost on the hot path).
- Per-RPC counters and latency histograms are kept as plain ints by
  :class:`RpcCollector` (the servicer's ``observer`` hook calls
  :meth:`ServerMetrics.observe_call`), one series per RPC of the RPC table.
- The Redis cache reports its round trips through :meth:`ServerMetrics.observe_redis`.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator

import grpc
from descriptor_client.errors import ERROR_TABLE
from descriptor_client.rpcs import RPCS, SERVICE
from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from .statter import StatterMetrics
from .version import build_info_collector

#: Latency buckets in seconds, from 50 microseconds (an in-memory hit) to 10 s.
RPC_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
REDIS_BUCKETS = RPC_BUCKETS

#: The status codes a handler can end with, pre-declared per method so they exist at zero.
HANDLER_CODES = (
    grpc.StatusCode.OK,
    *dict.fromkeys(cls.code for cls in ERROR_TABLE.values()),
    grpc.StatusCode.INTERNAL,
)

#: The Redis cache's ``observe`` hook: (operation, seconds).
RedisObserver = Callable[[str, float], None]

#: The Redis cache's operations, pre-declared so their series exist before the first call.
REDIS_OPERATIONS = ("stat", "stat_many", "set_descriptor", "clear")


class StatterCollector(Collector):
    """distribution's cache counters, read from the statter at scrape time."""

    def __init__(self, source: Callable[[], StatterMetrics]) -> None:
        self.source = source

    def describe(self) -> Iterable[CounterMetricFamily]:
        return self._families(StatterMetrics())

    def collect(self) -> Iterable[CounterMetricFamily]:
        return self._families(self.source())

    @staticmethod
    def _families(m: StatterMetrics) -> Iterator[CounterMetricFamily]:
        for name, value, doc in (
            ("registry_storage_cache_requests", m.requests, "The number of cache requests received (Stat lookups)."),
            ("registry_storage_cache_hits", m.hits, "The number of lookups the cache answered."),
            ("registry_storage_cache_misses", m.misses, "The number of lookups the cache did not answer."),
            ("registry_storage_cache_errors", m.errors, "The number of cache calls that failed."),
            ("descriptor_cache_revalidations", m.revalidations, "Cached entries checked against the backend again."),
            ("descriptor_cache_revalidation_removed", m.revalidation_removed, "Revalidated entries found gone."),
            ("descriptor_cache_revalidation_failed", m.revalidation_failed, "Revalidations the backend failed."),
            ("descriptor_cache_revalidation_skipped", m.revalidation_skipped, "Revalidations over the rate limit."),
        ):
            yield CounterMetricFamily(name, doc, value=value)


#: The ``le`` label of each RPC bucket, as prometheus_client writes it.
_BOUNDS = tuple(floatToGoString(b) for b in (*RPC_BUCKETS, float("inf")))  # type: ignore[no-untyped-call]


class RpcCollector(Collector):
    """Per-RPC counters and latency histograms, kept as plain ints on the hot path.

    :meth:`observe` costs a dict lookup, a C-level ``bisect`` and three additions
    (prometheus_client's own Counter and Histogram take a lock and walk the buckets on
    every call); the families are built at scrape time. The names are
    go-grpc-prometheus's, so stock gRPC dashboards work too.
    """

    LABELS = ("grpc_service", "grpc_method", "grpc_type")

    def __init__(self) -> None:
        self._handled: dict[tuple[str, grpc.StatusCode], list[int]] = {}
        # method -> [bucket counts..., +Inf count], and the sum of seconds
        self._buckets: dict[str, list[int]] = {}
        self._sums: dict[str, float] = {}
        for method in RPCS:
            self._add(method)

    def _add(self, method: str) -> None:
        for code in HANDLER_CODES:
            self._handled[method, code] = [0]
        self._buckets[method] = [0] * (len(RPC_BUCKETS) + 1)
        self._sums[method] = 0.0

    def observe(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        buckets = self._buckets.get(method)
        if buckets is None:
            self._add(method)
            buckets = self._buckets[method]
        handled = self._handled.get((method, code))
        if handled is None:
            handled = self._handled[method, code] = [0]
        handled[0] += 1
        buckets[bisect.bisect_left(RPC_BUCKETS, seconds)] += 1
        self._sums[method] += seconds

    def describe(self) -> Iterable[Metric]:
        return self.collect()

    def collect(self) -> Iterable[Metric]:
        handled = CounterMetricFamily(
            "grpc_server_handled",
            "RPCs completed on the server, by method and status code.",
            labels=(*self.LABELS, "grpc_code"),
        )
        for (method, code), count in list(self._handled.items()):
            handled.add_metric((SERVICE, method, "unary", code.name), count[0])
        handling = HistogramMetricFamily(
            "grpc_server_handling_seconds",
            "Latency of RPCs handled by the server, in seconds.",
            labels=self.LABELS,
        )
        for method, counts in list(self._buckets.items()):
            cumulative, running = [], 0
            for bound, n in zip(_BOUNDS, counts, strict=True):
                running += n
                cumulative.append((bound, running))
            handling.add_metric((SERVICE, method, "unary"), cumulative, self._sums[method])
        return [handled, handling]


class ServerMetrics:
    """Every metric of one server, in its own registry (never the global one)."""

    def __init__(self, statter_metrics: Callable[[], StatterMetrics], *, redis: bool = False) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(StatterCollector(statter_metrics))
        self.registry.register(build_info_collector())
        self.rpcs = RpcCollector()
        self.registry.register(self.rpcs)
        self.inflight = Gauge(
            "grpc_server_inflight",
            "RPCs in progress on the server.",
            ("grpc_service",),
            registry=self.registry,
        )
        self.redis = Histogram(
            "registry_storage_cache_redis_seconds",
            "Latency of Redis cache operations, in seconds (each operation one round trip or pipeline).",
            ("operation",),
            buckets=REDIS_BUCKETS,
            registry=self.registry,
        )
        if redis:
            for op in REDIS_OPERATIONS:
                self.redis.labels(op)
        self.observe_call = self.rpcs.observe

    def observe_redis(self, operation: str, seconds: float) -> None:
        """The Redis cache's ``observe`` hook: one round trip of ``operation`` took ``seconds``."""
        self.redis.labels(operation).observe(seconds)

    def track_inflight(self, count: Callable[[], int]) -> None:
        self.inflight.labels(SERVICE).set_function(lambda: float(count()))


def metric_names(registry: CollectorRegistry) -> Iterator[str]:
    """Every sample name the registry exposes (for docs and tests)."""
    for family in registry.collect():
        for sample in family.samples:
            yield sample.name
