"""Prometheus metrics of one server, in its own registry (never the global one).

- The cached statter's counters are read at scrape time by :class:`StatterCollector`
  (distribution's names, present at zero from the start, no cost on the hot path).
- Per-RPC counters and latency histograms are kept as plain ints by
  :class:`RpcCollector` (the servicer's ``observer`` hook calls
  :meth:`ServerMetrics.observe_call`), one series per RPC of the RPC table.
- The Redis cache reports its round trips through :meth:`ServerMetrics.observe_redis`;
  the backend wrapper (:class:`descriptor_server.wrappers.traces.TracedBackend`) its calls through
  :meth:`ServerMetrics.observe_backend`.
- :class:`CacheCollector` reads the cache's size, capacity, evictions and Redis state at
  scrape time; process and Python collectors are registered on the same registry.
- Other components (the near cache) add their own collectors with :meth:`ServerMetrics.register`.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator

import grpc
from descriptor_client.errors import ERROR_TABLE
from descriptor_client.rpcs import RPCS, SERVICE
from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from ..core.statter import StatterMetrics
from ..wrappers.bounds import BoundedBackend

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
REDIS_OPERATIONS = ("stat", "stat_many", "set_descriptor", "fill", "clear")

#: Backend calls: seconds from a millisecond (a local disk) to a minute (a hung peer).
BACKEND_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BACKEND_OPERATIONS = ("stat", "set_descriptor", "clear")
#: ok; unknown (BLOB_UNKNOWN); refused (another contract answer, e.g. UNSUPPORTED); error.
BACKEND_OUTCOMES = ("ok", "unknown", "refused", "error")

#: distribution 2.8's one labelled counter, ``registry_storage_cache_total{type}``.
DISTRIBUTION_2_TYPES = (("Request", "requests"), ("Hit", "hits"), ("Miss", "misses"), ("Error", "errors"))


class StatterCollector(Collector):
    """distribution's cache counters, read from the statter at scrape time.

    Under both names distribution has used: 3.x's ``registry_storage_cache_{requests,hits,
    errors}_total`` (and ``misses``), and 2.8's ``registry_storage_cache_total{type}``
    with ``type`` ``Request``, ``Hit``, ``Miss``, ``Error``.
    """

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
            (
                "descriptor_cache_setdescriptor_checked",
                m.set_checked,
                "SetDescriptors checked against the backend first (the digest cleared lately).",
            ),
            (
                "descriptor_cache_setdescriptor_dropped",
                m.set_dropped,
                "SetDescriptors not written: the blob was gone from the backend (or the check failed).",
            ),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        legacy = CounterMetricFamily(
            "registry_storage_cache",
            "The number of cache request received, by type (distribution 2.8's name).",
            labels=("type",),
        )
        for label, name in DISTRIBUTION_2_TYPES:
            legacy.add_metric((label,), getattr(m, name))
        yield legacy


class BackendBoundsCollector(Collector):
    """The backend bounds (``storage.backendtimeout``, ``maxinflight``, ``maxpending``) at scrape time."""

    def __init__(self, backend: BoundedBackend) -> None:
        self.backend = backend

    def describe(self) -> Iterable[Metric]:
        return self.collect()

    def collect(self) -> Iterable[Metric]:
        b = self.backend
        yield CounterMetricFamily(
            "descriptor_backend_shed", "Backend calls refused at once: every slot and queue place taken.", b.shed_total
        )
        yield CounterMetricFamily(
            "descriptor_backend_timeouts", "Backend calls past storage.backendtimeout.", b.timeouts_total
        )
        yield GaugeMetricFamily("descriptor_backend_inflight", "Backend calls holding a slot now.", b.inflight)
        yield GaugeMetricFamily("descriptor_backend_pending", "Backend calls waiting for a slot now.", b.pending)


class CacheCollector(Collector):
    """The cache's state at scrape time: entries and capacity, evictions, Redis up.

    Reads what the cache object offers: ``len()`` and ``capacity`` / ``evictions``
    attributes (the in-memory cache), or ``up`` (the Redis cache). Nothing on the hot path.
    """

    def __init__(self, cache: Callable[[], object], kind: str) -> None:
        self.cache = cache
        self.kind = kind

    def describe(self) -> Iterable[Metric]:
        return self._families(None)

    def collect(self) -> Iterable[Metric]:
        return self._families(self.cache())

    def _families(self, cache: object) -> Iterator[Metric]:
        labels = ("cache",)
        if self.kind == "inmemory":
            entries = GaugeMetricFamily(
                "registry_storage_cache_entries",
                "Entries in the cache (global and repository entries together).",
                labels=labels,
            )
            entries.add_metric((self.kind,), float(len(cache)) if hasattr(cache, "__len__") else 0.0)
            capacity = GaugeMetricFamily(
                "registry_storage_cache_capacity",
                "Entries the cache holds at most (0 = unbounded).",
                labels=labels,
            )
            capacity.add_metric((self.kind,), float(getattr(cache, "capacity", 0)))
            evictions = CounterMetricFamily(
                "registry_storage_cache_evictions",
                "Entries dropped to stay within capacity.",
                labels=labels,
            )
            evictions.add_metric((self.kind,), float(getattr(cache, "evictions", 0)))
            yield from (entries, capacity, evictions)
        elif self.kind == "redis":
            yield GaugeMetricFamily(
                "registry_storage_cache_redis_up",
                "1 while Redis answers; 0 from a failed round trip until the next one succeeds.",
                value=1.0 if getattr(cache, "up", True) else 0.0,
            )


#: The ``le`` label of each RPC bucket, as prometheus_client writes it.
_BOUNDS = tuple(floatToGoString(b) for b in (*RPC_BUCKETS, float("inf")))  # type: ignore[no-untyped-call]


_OK = grpc.StatusCode.OK
_bisect = bisect.bisect_left


class RpcCollector(Collector):
    """Per-RPC counters and latency histograms, kept as plain ints on the hot path.

    :meth:`observe` costs a dict lookup, a C-level ``bisect`` and three additions
    (prometheus_client's own Counter and Histogram take a lock and walk the buckets on
    every call); the families are built at scrape time. The names are
    go-grpc-prometheus's, so stock gRPC dashboards work too.
    """

    LABELS = ("grpc_service", "grpc_method", "grpc_type")

    def __init__(self) -> None:
        # Series keys: the method name for the service's own methods (the servicer's
        # observer), the full path for the other services' (the interceptor).
        self._labels: dict[str, tuple[str, str, str]] = {}
        self._started: dict[str, list[int]] = {}
        self._handled: dict[tuple[str, grpc.StatusCode], list[int]] = {}
        # key -> [bucket counts..., +Inf count], and [the sum of seconds]
        self._buckets: dict[str, list[int]] = {}
        self._sums: dict[str, list[float]] = {}
        #: key -> (its OK counter, its buckets, its sum): the lists above, found with one
        #: str lookup per call (most calls end OK, and a StatusCode hashes in Python).
        self._hot: dict[str, tuple[list[int], list[int], list[float]]] = {}
        for method in RPCS:
            self._add(method, (SERVICE, method, "unary"))

    def _add(self, key: str, labels: tuple[str, str, str]) -> None:
        self._labels[key] = labels
        self._started[key] = [0]
        for code in HANDLER_CODES:
            self._handled[key, code] = [0]
        self._buckets[key] = [0] * (len(RPC_BUCKETS) + 1)
        self._sums[key] = [0.0]
        self._hot[key] = (self._handled[key, grpc.StatusCode.OK], self._buckets[key], self._sums[key])

    def started_by_method(self) -> dict[str, list[int]]:
        """Method name (``Stat``) -> the started counter of each of the service's own methods
        (the servicer counts their calls: ``counter[0] += 1``)."""
        return {method: self._started[method] for method in RPCS}

    def add_series(self, path: str, kind: str) -> None:
        """Declare the series of another service's method (``/service/method``) once."""
        if path not in self._labels:
            service, _, method = path.lstrip("/").rpartition("/")
            self._add(path, (service, method, kind))

    def start(self, key: str) -> None:
        self._started[key][0] += 1

    def observe(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        hot = self._hot.get(method)
        if hot is None:
            self._add(method, (SERVICE, method, "unary"))
            hot = self._hot[method]
        ok, buckets, total = hot
        if code is _OK:
            ok[0] += 1
        else:
            handled = self._handled.get((method, code))
            if handled is None:
                handled = self._handled[method, code] = [0]
            handled[0] += 1
        buckets[_bisect(RPC_BUCKETS, seconds)] += 1
        total[0] += seconds

    def recorder(self, method: str) -> Callable[[grpc.StatusCode, float], None]:
        """:meth:`observe` for one method, its series found once (the servicer's
        observer binds one per method as it builds the handlers)."""
        if method not in self._hot:
            self._add(method, (SERVICE, method, "unary"))
        ok, buckets, total = self._hot[method]
        handled_of = self._handled

        def record(code: grpc.StatusCode, seconds: float) -> None:
            if code is _OK:
                ok[0] += 1
            else:
                handled = handled_of.get((method, code))
                if handled is None:
                    handled = handled_of[method, code] = [0]
                handled[0] += 1
            buckets[_bisect(RPC_BUCKETS, seconds)] += 1
            total[0] += seconds

        return record

    def describe(self) -> Iterable[Metric]:
        return self.collect()

    def collect(self) -> Iterable[Metric]:
        labels = dict(self._labels)
        started = CounterMetricFamily(
            "grpc_server_started",
            "RPCs started on the server, by method.",
            labels=self.LABELS,
        )
        for key, count in list(self._started.items()):
            started.add_metric(labels[key], count[0])
        handled = CounterMetricFamily(
            "grpc_server_handled",
            "RPCs completed on the server, by method and status code.",
            labels=(*self.LABELS, "grpc_code"),
        )
        for (key, code), count in list(self._handled.items()):
            handled.add_metric((*labels[key], code.name), count[0])
        handling = HistogramMetricFamily(
            "grpc_server_handling_seconds",
            "Latency of RPCs handled by the server, in seconds.",
            labels=self.LABELS,
        )
        for key, counts in list(self._buckets.items()):
            cumulative, running = [], 0
            for bound, n in zip(_BOUNDS, counts, strict=True):
                running += n
                cumulative.append((bound, running))
            handling.add_metric(labels[key], cumulative, self._sums[key][0])
        return [started, handled, handling]


class ServerMetrics:
    """Every metric of one server, in its own registry (never the global one)."""

    def __init__(
        self,
        statter_metrics: Callable[[], StatterMetrics],
        *,
        redis: bool = False,
        cache: Callable[[], object] | None = None,
        cache_kind: str = "",
        backend: str = "",
        build_info: Collector | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(StatterCollector(statter_metrics))
        if build_info is not None:  # descriptor_build_info (the app's version)
            self.registry.register(build_info)
        # process_* and python_* as every Python exporter has them, on this registry only.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        if cache is not None:
            self.registry.register(CacheCollector(cache, cache_kind or ("redis" if redis else "")))
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
        self.backend = Histogram(
            "registry_storage_backend_request_duration_seconds",
            "Latency of backend calls, in seconds, by backend, operation and outcome "
            "(ok, unknown = BLOB_UNKNOWN, refused = another contract answer, error).",
            ("backend", "operation", "outcome"),
            buckets=BACKEND_BUCKETS,
            registry=self.registry,
        )
        self.backend_name = backend
        if backend:
            for op in BACKEND_OPERATIONS:
                for outcome in BACKEND_OUTCOMES:
                    self.backend.labels(backend, op, outcome)
        self.observe_call = self.rpcs.observe

    def register(self, collector: Collector) -> None:
        """Add a component's own collector (the hook the near cache's counters use)."""
        self.registry.register(collector)

    def observe_backend(self, operation: str, outcome: str, seconds: float) -> None:
        """The backend wrapper's hook: one call of ``operation`` ended with ``outcome``."""
        self.backend.labels(self.backend_name, operation, outcome).observe(seconds)

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
