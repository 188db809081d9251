"""Operations: Prometheus metrics, the debug HTTP endpoint, per-call logs, the backend probe.

- :class:`ServerMetrics` owns one :class:`prometheus_client.CollectorRegistry` per
  server. The cached statter's counters are read at scrape time by
  :class:`StatterCollector` (distribution's names, present at zero from the start, no
  cost on the hot path); per-RPC counters and latency histograms are updated by
  :meth:`ServerMetrics.observe_call`, the servicer's ``observer`` hook; the Redis cache
  reports its round trips through :meth:`ServerMetrics.observe_redis`.
- :class:`MetricsEndpoint` serves the registry on ``http.debug.addr`` at
  ``http.debug.prometheus.path`` only (404 elsewhere), in a daemon thread.
- :class:`CallLogger` writes one line per failed call at info, per call at debug.
- :func:`setup_logging` configures ``log.level`` and ``log.formatter`` (text or JSON).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
import socket
import socketserver
import sys
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import grpc
from descriptor_client.errors import ERROR_TABLE
from prometheus_client import CollectorRegistry, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from .config import Config, ConfigError, LogConfig
from .statter import StatterMetrics

log = logging.getLogger("descriptor_server")
call_log = logging.getLogger("descriptor_server.calls")

SERVICE = "descriptor.v1.BlobDescriptorService"
METHODS = ("Stat", "SetDescriptor", "Clear", "BatchStat", "GetMetrics")

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


# -- metrics ---------------------------------------------------------------------------


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
            ("requests", m.requests, "The number of cache requests received (Stat lookups)."),
            ("hits", m.hits, "The number of lookups the cache answered."),
            ("misses", m.misses, "The number of lookups the cache did not answer."),
            ("errors", m.errors, "The number of cache calls that failed."),
        ):
            yield CounterMetricFamily(f"registry_storage_cache_{name}", doc, value=value)


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
        for method in METHODS:
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


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics endpoint: " + format, *args)


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _ThreadingWSGIServer6(_ThreadingWSGIServer):
    address_family = socket.AF_INET6


WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def path_only(path: str, app: WSGIApp) -> WSGIApp:
    """``app`` at exactly ``path``; 404 for every other path."""

    def dispatch(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "") == path:
            return app(environ, start_response)
        body = b"not found: metrics are served at " + path.encode() + b"\n"
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [body]

    return dispatch


def split_hostport(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


class MetricsEndpoint:
    """The Prometheus endpoint: ``path`` on ``addr``, served from a daemon thread."""

    def __init__(self, registry: CollectorRegistry, addr: str, path: str) -> None:
        self.registry = registry
        self.addr = addr
        self.path = path
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.host = ""
        self.port = 0

    def start(self) -> None:
        host, port = split_hostport(self.addr)
        cls = _ThreadingWSGIServer6 if ":" in host else _ThreadingWSGIServer
        app = path_only(self.path, make_wsgi_app(self.registry))
        try:
            self._server = make_server(host, port, app, server_class=cls, handler_class=_QuietHandler)
        except OSError as err:
            raise ConfigError("http.debug.addr", f"cannot listen on {self.addr}: {err.strerror or err}") from None
        self.host, self.port = host, self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()
        shown = f"[{host}]" if ":" in host else host
        # Not "listening on": that phrase is the gRPC readiness line.
        log.info("metrics endpoint at http://%s:%d%s", shown, self.port, self.path)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


# -- logs -----------------------------------------------------------------------------

#: Longest digest or repository echoed into a log line (bad input can be anything).
MAX_LOGGED = 300


def _clip(value: str) -> str:
    return value if len(value) <= MAX_LOGGED else value[:MAX_LOGGED] + "..."


def call_fields(method: str, code: grpc.StatusCode, seconds: float, request: Any) -> dict[str, Any]:
    """What a call log line says: never metadata, so never a token."""
    fields: dict[str, Any] = {"method": method}
    if request is not None:
        if method == "BatchStat":
            fields["digests"] = len(request.digests)
        elif hasattr(request, "digest"):
            fields["digest"] = _clip(request.digest)
        if hasattr(request, "repository"):
            fields["repository"] = _clip(request.repository)
    fields["status"] = code.name
    fields["duration_ms"] = round(seconds * 1000, 3)
    return fields


#: Answers, not failures: BLOB_UNKNOWN is how "not cached, not stored" is said, and a
#: registry asks it before every upload, so it is logged at debug like OK.
ANSWERS = frozenset((grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND))


class CallLogger:
    """One line per failed call at info, one per call at debug."""

    def __init__(self, logger: logging.Logger = call_log) -> None:
        self.logger = logger

    def __call__(self, method: str, code: grpc.StatusCode, seconds: float, request: Any) -> None:
        level = logging.DEBUG if code in ANSWERS else logging.INFO
        if not self.logger.isEnabledFor(level):
            return
        fields = call_fields(method, code, seconds, request)
        # Values are JSON-quoted in the text form, so no input can forge a log line.
        text = " ".join(f"{k}={json.dumps(v)}" if isinstance(v, str) else f"{k}={v}" for k, v in fields.items())
        self.logger.log(level, "call %s", text, extra=fields)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with any ``extra=`` fields of the record."""

    _skip = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in self._skip})
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(config: LogConfig) -> None:
    """Log to stderr at ``log.level``, as text or JSON (``log.formatter``)."""
    handler = logging.StreamHandler(sys.stderr)
    if config.formatter == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    level = config.level.upper()
    root.setLevel("WARNING" if level == "WARN" else level)
    # Libraries' own debug chatter (event loop, gRPC core) is not the service's.
    for name in ("asyncio", "grpc"):
        logging.getLogger(name).setLevel(logging.INFO if root.level < logging.INFO else logging.NOTSET)


# -- the server's operations hooks ---------------------------------------------------------


class Operations:
    """Metrics, call logs and the backend probe of one server."""

    def __init__(self, config: Config, statter_metrics: Callable[[], StatterMetrics]) -> None:
        self.config = config
        self.metrics = ServerMetrics(statter_metrics, redis=config.storage.cache.blobdescriptor == "redis")
        self.call_logger = CallLogger()
        self.endpoint: MetricsEndpoint | None = None
        debug = config.http.debug
        if debug.addr and debug.prometheus.enabled:
            self.endpoint = MetricsEndpoint(self.metrics.registry, debug.addr, debug.prometheus.path)
        self._probe_task: asyncio.Task[None] | None = None

    def observe(self, method: str, code: grpc.StatusCode, seconds: float, request: Any) -> None:
        """The servicer's ``observer`` hook."""
        self.metrics.observe_call(method, code, seconds)
        self.call_logger(method, code, seconds, request)

    def start(self) -> None:
        if self.endpoint is not None:
            self.endpoint.start()
        elif self.config.http.debug.addr:
            log.info("http.debug.addr is set but http.debug.prometheus.enabled is false: no metrics endpoint")

    async def start_probe(
        self, probe: Callable[[], Awaitable[None]], set_serving: Callable[[bool], Awaitable[None]], interval: float
    ) -> None:
        """Probe once now (the first health answer reflects it), then every ``interval`` seconds."""
        timeout = max(1.0, interval)
        failure = await probe_once(probe, timeout)
        if failure is not None:
            log.warning("backend probe failed, health NOT_SERVING for %s: %s", SERVICE, failure)
        await set_serving(failure is None)
        self._probe_task = asyncio.ensure_future(probe_loop(probe, set_serving, interval, healthy=failure is None))

    async def stop_probe(self) -> None:
        if self._probe_task is not None:
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe_task
            self._probe_task = None

    async def stop(self) -> None:
        await self.stop_probe()
        if self.endpoint is not None:
            await asyncio.to_thread(self.endpoint.stop)


async def probe_once(probe: Callable[[], Awaitable[None]], timeout: float) -> str | None:
    """None when the probe passes, else why it failed."""
    try:
        await asyncio.wait_for(probe(), timeout)
    except TimeoutError:
        return f"no answer within {timeout:g}s"
    except Exception as err:
        return str(err) or type(err).__name__
    return None


async def probe_loop(
    probe: Callable[[], Awaitable[None]],
    set_serving: Callable[[bool], Awaitable[None]],
    interval: float,
    *,
    healthy: bool,
) -> None:
    """Probe the backend every ``interval`` seconds; flip the service's health on changes."""
    timeout = max(1.0, interval)
    while True:
        await asyncio.sleep(interval)
        failure = await probe_once(probe, timeout)
        if (failure is None) == healthy:
            continue
        healthy = failure is None
        if failure is not None:
            log.warning("backend probe failed, health NOT_SERVING for %s: %s", SERVICE, failure)
        else:
            log.info("backend probe passes again, health SERVING for %s", SERVICE)
        await set_serving(healthy)


def metric_names(registry: CollectorRegistry) -> Iterator[str]:
    """Every sample name the registry exposes (for docs and tests)."""
    for family in registry.collect():
        for sample in family.samples:
            yield sample.name
