"""The server's lifecycle: a grpc.aio server with health and reflection, start and drain.

:class:`DescriptorServer` puts the statter (:mod:`.composition`) behind the servicer,
the interceptor, the authorizer, health and the metrics endpoint. On SIGTERM or SIGINT
it drains: health turns NOT_SERVING, new calls get UNAVAILABLE / ``SERVER_DRAINING``,
calls in flight finish, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn

import grpc
from descriptor_client.rpcs import SERVICE
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from .. import security
from ..config import Config, ConfigError
from ..core import loggers
from ..core.statter import CachedBlobStatter
from ..observability.debug_http import MetricsEndpoint
from ..observability.logs import CallLogger
from ..observability.metrics import BackendBoundsCollector, ServerMetrics
from ..observability.tracing import Tracing, setup_tracing
from ..observability.worker_metrics import SiblingListener, totals_registry
from ..rpc.context import current_principal
from ..rpc.health import Health
from ..rpc.interceptor import MeasuringRegistrar, ObservingInterceptor
from ..rpc.limits import server_options
from ..rpc.servicer import BoundObserver, Context, DescriptorServicer, Observer
from ..security.authorizer import AUDITED, Authorizer
from ..wrappers.bounds import BoundedBackend
from ..wrappers.traces import innermost
from ..wrappers.watch import WatchedCache, check_cache_at_start, combined_probe
from . import workers
from .composition import build_statter
from .version import build_info_collector, version

log = logging.getLogger(loggers.SERVER)

#: The last seconds of ``grpc.drain`` kept for the server's stop (see :meth:`DescriptorServer.drain`).
STOP_RESERVE = 1.0

#: Seconds without a new call after which a draining server stops (bounded by ``grpc.drain``).
DRAIN_QUIET = 0.5

#: Seconds the backend's threads get to finish once the process has drained.
STUCK_THREADS = 2.0


def check_bindable(addr: str, key: str, *, reuseport: bool = False) -> None:
    """Refuse an address already in use with one clear line (gRPC core would also log its own).

    Only a definite EADDRINUSE is reported here; anything else is left to the server's bind.
    """
    host, _, port = addr.rpartition(":")
    if port == "0":
        return
    try:
        infos = socket.getaddrinfo(
            host.strip("[]") or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (OSError, ValueError):
        return
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuseport and hasattr(socket, "SO_REUSEPORT"):
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                probe.bind(sockaddr)
            except OSError as err:
                if err.errno == errno.EADDRINUSE:
                    raise ConfigError(key, f"cannot listen on {addr}: address already in use") from None


class _CallObserver:
    """The servicer's observer: the per-RPC metrics, the call log, the audit.

    Bound once per method (:meth:`bind`), as the servicer builds its handlers: an OK
    call then costs its method's counters (found once), one level check of the call
    log (its line is built only when debug is on), and no audit unless the method is
    audited.
    """

    def __init__(self, server: DescriptorServer, audit: Callable[[str, grpc.StatusCode, float, Any], None] | None):
        self.server = server
        self.audit = audit

    def __call__(
        self, method: str, code: grpc.StatusCode, seconds: float, request: Any, *, context: Context, reason: str
    ) -> None:
        self.bind(method)(code, seconds, request, context, reason)

    def bind(self, method: str) -> BoundObserver:
        record = self.server.metrics.rpcs.recorder(method)
        call_logger = self.server.call_logger
        debug_on = functools.partial(call_logger.logger.isEnabledFor, logging.DEBUG)
        audit = self.audit if method in AUDITED else None
        ok = grpc.StatusCode.OK

        def observe(code: grpc.StatusCode, seconds: float, request: Any, context: Context, reason: str) -> None:
            record(code, seconds)
            if code is not ok or debug_on():  # an OK call's line is at debug (CallLogger)
                call_logger(method, code, seconds, request, context=context, reason=reason)
            if audit is not None:
                audit(method, code, seconds, request)

        return observe


class DescriptorServer:
    """The running service: a grpc.aio server with health and reflection, and its drain."""

    def __init__(
        self, config: Config, statter: CachedBlobStatter | None = None, *, tracing: Tracing | None = None
    ) -> None:
        self.config = config
        self.tracing = tracing if tracing is not None else setup_tracing(os.environ)
        kind = config.storage.cache.blobdescriptor
        self.metrics = ServerMetrics(
            lambda: self.statter.metrics,
            redis=kind == "redis",
            cache=lambda: innermost(self.statter.cache),
            cache_kind=kind,
            backend=config.storage.backend,
            build_info=build_info_collector(),
        )
        self.statter = (
            statter
            if statter is not None
            else build_statter(
                config,
                observe=self.metrics.observe_redis,
                observe_backend=self.metrics.observe_backend,
                tracing=self.tracing,
            )
        )
        self.call_logger = CallLogger(principal=current_principal)
        authorizer = security.build_authorizer(config.auth)
        #: Whether the authorizer checks tokens, so reads each call's metadata.
        self.reads_tokens = authorizer.enabled
        g = config.grpc
        self.servicer = DescriptorServicer(
            self.statter,
            authorizer=authorizer,
            observer=self._observer(authorizer),
            # Credentials are checked from the metadata before any request is read.
            authenticator=getattr(authorizer, "authenticate", None) if authorizer.enabled else None,
            request_timeout=g.requesttimeout,
            max_calls=g.maxconcurrentcalls,
            started=self.metrics.rpcs.started_by_method(),
        )
        self.metrics.track_inflight(lambda: self.servicer.inflight)
        if isinstance(self.statter.backend, BoundedBackend):
            self.metrics.register(BackendBoundsCollector(self.statter.backend))
        near = getattr(innermost(self.statter.cache), "near", None) if kind == "redis" else None
        if near is not None:  # the Redis cache's near cache: its counters, read at scrape time
            from ..observability.nearcache import NearCacheCollector

            self.metrics.register(NearCacheCollector(near.stats))
        cache = self.statter.cache
        cache_probe = cache.probe if config.grpc.healthprobecache and isinstance(cache, WatchedCache) else None
        self.health = Health(combined_probe(self.statter.backend.probe, cache_probe), config.grpc.healthprobeinterval)
        debug = config.http.debug
        worker = workers.current
        self.servicer.worker = (worker.index, worker.count)
        # With --workers, worker 0's endpoint serves the totals; the others answer it.
        self.sibling: SiblingListener | None = None
        registry = self.metrics.registry
        if worker.metrics_dir and worker.index == 0:
            registry = totals_registry(registry, worker.metrics_dir, worker.count)
        elif worker.metrics_dir:
            self.sibling = SiblingListener(self.metrics.registry, worker.metrics_dir, worker.index)
        # The debug listener: the metrics, and the HTTP health path for load balancers.
        self.endpoint = (
            MetricsEndpoint(
                registry if debug.prometheus.enabled else None,
                debug.addr,
                debug.prometheus.path,
                health_path=debug.healthpath,
                serving=lambda: self.health.serving,
            )
            if debug.addr and (debug.prometheus.enabled or debug.healthpath)
            else None
        )
        self.server: grpc.aio.Server | None = None
        # TLS material re-read when its files change and on SIGHUP (security.ReloadingTLS).
        tls = config.grpc.tls
        self.tls = security.ReloadingTLS(tls) if tls.certificate else None
        self.port = 0
        self.health_server: grpc.aio.Server | None = None
        self.health_port = 0
        self._stopping = asyncio.Event()

    def observe(
        self, method: str, code: grpc.StatusCode, seconds: float, request: Any, *, context: Context, reason: str
    ) -> None:
        """Per-RPC metrics and the call log of one call (the servicer's hook adds the audit)."""
        self.metrics.observe_call(method, code, seconds)
        self.call_logger(method, code, seconds, request, context=context, reason=reason)

    def _observer(self, authorizer: Any) -> Observer:
        """The servicer's ``observer`` hook: :meth:`observe`, then the authorizer's audit."""
        return _CallObserver(self, authorizer.observe if isinstance(authorizer, Authorizer) else None)

    async def start(self) -> int:
        g = self.config.grpc
        server = grpc.aio.server(
            # grpc.maxconcurrentcalls is the servicer's (calls it refuses are counted and
            # logged; grpcio's maximum_concurrent_rpcs would refuse them unseen).
            options=server_options(g),
            # Spans and the token's metadata only: left out when neither is on.
            interceptors=(
                (ObservingInterceptor(self.metrics.rpcs, self.tracing.tracer, hand_metadata=self.reads_tokens),)
                if ObservingInterceptor.needed(self.tracing.tracer, self.reads_tokens)
                else ()
            ),
        )
        server.add_generic_rpc_handlers((self.servicer.generic_handler(),))
        # Health and reflection register through the registrar, which measures their calls
        # (the service's own methods are measured by the servicer).
        others = MeasuringRegistrar(server, self.metrics.rpcs)
        self.health.add_to(others)
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            reflection.aio.ReflectionServicer(
                (SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
            ),
            others,
        )
        check_bindable(g.addr, "grpc.addr", reuseport=g.workers > 1)
        try:
            if self.tls is not None:
                self.port = server.add_secure_port(g.addr, self.tls.credentials)
            else:
                self.port = server.add_insecure_port(g.addr)
        except RuntimeError as err:
            raise ConfigError("grpc.addr", f"cannot listen on {g.addr}: {err}") from None
        # The metrics endpoint first: a bad http.debug.addr fails before serving.
        if self.sibling is not None:
            self.sibling.start()
        if self.endpoint is not None:
            self.endpoint.start()
        elif self.config.http.debug.addr:
            log.info("http.debug.addr is set but http.debug.prometheus.enabled is false: no metrics endpoint")
        if g.healthaddr:
            self.health_server, self.health_port = self.health.listener(g.healthaddr)
            await self.health_server.start()
        await server.start()
        self.server = server
        await self.health.start()
        await check_cache_at_start(self.config, self.statter.cache)
        host = g.addr.rsplit(":", 1)[0]
        log.info(
            "descriptor-server %s listening on %s:%d (cache %s, backend %s)",
            version(),
            host,
            self.port,
            self.config.storage.cache.blobdescriptor,
            self.config.storage.backend,
        )
        if self.health_server is not None:
            log.info("health-only listener at %s:%d (plaintext)", g.healthaddr.rsplit(":", 1)[0], self.health_port)
        log.info(
            "security: tls %s, %s",
            ("mutual" if g.tls.clientcas else "on") if self.tls is not None else "off",
            security.describe_auth(self.servicer.authorizer),
        )
        return self.port

    def request_stop(self) -> None:
        self._stopping.set()

    async def wait(self) -> None:
        await self._stopping.wait()

    async def drain(self, grace: float | None = None, *, stop: bool = True) -> None:
        """Refuse new calls, let the calls in flight finish, then stop.

        Health turns NOT_SERVING first (clients that watch health, as the project's
        clients do, leave the rotation at once); calls still coming are answered
        ``SERVER_DRAINING`` (sent again elsewhere); the drain ends when no call has
        arrived for :data:`DRAIN_QUIET` seconds and none is in flight, within
        ``grpc.drain``. Then, with ``stop``, grpcio's stop, which cancels (CANCELLED)
        the calls the transport has accepted but not yet handed to a handler and those
        arriving before the client reads the GOAWAY (grpc/grpc#41785): fine for a
        server inside another program. The process (:func:`serve`) drains with
        ``stop=False`` and then ends (:func:`end_process`), which closes every
        connection instead, so such a call fails UNAVAILABLE in its client.
        """
        grace = self.config.grpc.drain if grace is None else grace
        quiet = min(DRAIN_QUIET, grace)
        log.info(
            "draining: refusing new calls (SERVER_DRAINING), %d in flight; stopping once none is in "
            "flight and no call has come for %gs, at most grpc.drain (%gs)",
            self.servicer.inflight,
            quiet,
            grace,
        )
        self.servicer.draining = True
        await self.health.drain()
        began = time.monotonic()
        deadline = began + grace
        # The end of grpc.drain is kept for the calls being answered at that moment
        # (SERVER_DRAINING to clients still sending): grpcio's stop gives them this
        # long before it cancels them; without the stop (the process ends) they get
        # this long to finish before their connection is closed.
        reserve = min(STOP_RESERVE, grace / 4)
        end = deadline - reserve if stop else deadline
        warned = False
        while True:
            now = time.monotonic()
            if not self.servicer.inflight and now - max(self.servicer.last_arrival, began) >= quiet:
                log.info("drained in %.1fs: nothing in flight, no call for %gs", now - began, quiet)
                break
            if now >= deadline - reserve and not warned:
                warned = True
                log.warning(
                    "grpc.drain (%gs) is nearly over: stopping with %d calls in flight (given %gs more, then "
                    "%s), the last call came %.1fs ago",
                    grace,
                    self.servicer.inflight,
                    reserve,
                    "cancelled" if stop else "their connections closed",
                    now - self.servicer.last_arrival,
                )
            if now >= end or (warned and not self.servicer.inflight):
                break
            await asyncio.sleep(0.01)
        if stop and self.server is not None:
            await self.server.stop(max(0.0, deadline - time.monotonic()))
        if stop and self.health_server is not None:
            await self.health_server.stop(0)
        await self.statter.close()
        if self.endpoint is not None:
            await asyncio.to_thread(self.endpoint.stop)
        if self.sibling is not None:
            await asyncio.to_thread(self.sibling.stop)
        await asyncio.to_thread(self.tracing.shutdown)
        log.info("stopped")


async def serve(config: Config) -> None:
    server = DescriptorServer(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.request_stop)
    security.install_reload(loop, server.servicer.authorizer, server.tls)
    # Signals held since start-up began (workers.hold_signals) are handled from here:
    # a SIGTERM that came early drains as soon as the server has started.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGTERM, signal.SIGINT, signal.SIGHUP))
    await server.start()
    await server.wait()
    await server.drain(stop=False)
    await end_process()


async def end_process(timeout: float = STUCK_THREADS) -> NoReturn:
    """End the drained process now (exit 0), without grpcio's stop and without unwinding.

    grpcio's stop, and the interpreter's own exit with a server still running, end with
    CANCELLED the calls the server has not yet handed to a handler: those the transport
    accepted, and those arriving before the client reads the GOAWAY (grpc/grpc#41785).
    Ending the process closes the connections instead, so such a call fails UNAVAILABLE
    in its client, which a client may retry (it was never executed). The backend's
    threads get ``timeout`` seconds to finish; one still blocked (a hung mount) is
    logged and left behind rather than keeping the process from exiting.
    """
    loop = asyncio.get_running_loop()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(loop.shutdown_default_executor()), timeout)
    stuck = [
        t.name
        for t in threading.enumerate()
        if t is not threading.current_thread() and not t.daemon and t.is_alive() and "_do_shutdown" not in t.name
    ]
    if stuck:
        log.warning("exiting with %d threads still blocked: %s", len(stuck), ", ".join(stuck))
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


__all__ = ["DRAIN_QUIET", "DescriptorServer", "check_bindable", "end_process", "serve"]
