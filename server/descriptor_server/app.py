"""Wiring and lifecycle: config -> cache + backend -> statter -> gRPC server.

``descriptor-server`` (and ``python -m descriptor_server``) with no arguments serves
the embedded default: in-memory cache, filesystem backend under ``./data``, on
``127.0.0.1:5051``. On SIGTERM or SIGINT it drains: health turns NOT_SERVING, new
calls get UNAVAILABLE / ``SERVER_DRAINING``, calls in flight finish, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import grpc
import yaml
from descriptor_client.rpcs import SERVICE
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection

from . import security, workers
from .backends import Backend, bounded
from .cachehealth import WatchedCache, check_cache_at_start, combined_probe
from .caches import Cache
from .config import Config, ConfigError, as_written, check_workers, load, to_dict
from .debug_http import MetricsEndpoint
from .health import Health
from .interceptor import ObservingInterceptor
from .limits import server_options
from .logs import CallLogger, setup_logging
from .metrics import BackendBoundsCollector, RedisObserver, ServerMetrics
from .revalidate import DEFAULT_CAPACITY, Revalidator
from .service import Context, DescriptorServicer
from .statter import CachedBlobStatter
from .tracing import BackendObserver, TracedBackend, TracedCache, Tracing, check_tracing, innermost, setup_tracing
from .version import VersionAction, version
from .worker_metrics import SiblingListener, totals_registry

log = logging.getLogger("descriptor_server")

#: Seconds without a new call after which a draining server stops (bounded by ``grpc.drain``).
DRAIN_QUIET = 0.5


def fence_ttl(config: Config) -> float:
    """How long a Clear's fence stands in a shared cache: longer than any backend read.

    A read is bounded by ``storage.backendtimeout`` (waiting included) and its write-back
    by ``redis.writetimeout``; without a backend timeout, ten minutes.
    """
    timeout = config.storage.backendtimeout
    return timeout + config.redis.writetimeout + 10.0 if timeout > 0 else 600.0


def build_cache(config: Config, *, observe: RedisObserver | None = None) -> Cache:
    kind = config.storage.cache.blobdescriptor
    if kind == "inmemory":
        from .caches.inmemory import InMemoryCache

        return InMemoryCache(config.storage.cache.blobdescriptorsize, fence_ttl=fence_ttl(config))
    if kind == "redis":
        import importlib

        redis_cache: Cache = importlib.import_module("descriptor_server.caches.redis").from_config(
            config.redis, observe=observe, fence_ttl=fence_ttl(config)
        )
        return WatchedCache(redis_cache, "redis cache")
    from .caches.none import NoneCache

    return NoneCache()


def build_backend(config: Config) -> Backend:
    storage = config.storage
    name = storage.backend
    if name == "filesystem":
        from .backends.filesystem import FilesystemBackend

        fs = storage.filesystem
        return FilesystemBackend(fs.rootdirectory if fs is not None else "./data")
    try:
        module = __import__(f"descriptor_server.backends.{name}", fromlist=["from_config"])
    except ImportError as err:
        raise ConfigError(f"storage.{name}", f"backend unavailable: {err}") from None
    backend: Backend = module.from_config(getattr(storage, name))
    return backend


def build_revalidator(config: Config) -> Revalidator | None:
    """``storage.cache.revalidate``: keys tracked as many as the in-memory cache holds."""
    cache = config.storage.cache
    if cache.revalidate <= 0 or cache.blobdescriptor == "none":
        return None
    bounded = cache.blobdescriptor == "inmemory" and cache.blobdescriptorsize > 0
    capacity = cache.blobdescriptorsize if bounded else DEFAULT_CAPACITY
    return Revalidator(cache.revalidate, cache.revalidaterate, capacity)


def build_statter(
    config: Config,
    *,
    observe: RedisObserver | None = None,
    observe_backend: BackendObserver | None = None,
    tracing: Tracing | None = None,
) -> CachedBlobStatter:
    """The statter over the configured cache and backend, in their observing wrappers.

    The backend is always wrapped, inside its bounds (the request-duration histogram of
    the calls it really makes, their spans, the line logged when it is back); the cache
    only when tracing is on (its spans), inside the WatchedCache of a Redis cache.
    """
    tracer = tracing.tracer if tracing is not None else None
    cache = build_cache(config, observe=observe)
    if tracer is not None:
        kind = config.storage.cache.blobdescriptor
        if isinstance(cache, WatchedCache):
            cache.inner = TracedCache(cache.inner, kind, tracer)
        else:
            cache = TracedCache(cache, kind, tracer)
    backend: Backend = TracedBackend(
        build_backend(config), config.storage.backend, tracer=tracer, observe=observe_backend
    )
    return CachedBlobStatter(
        cache,
        bounded.from_config(backend, config.storage),
        delete_enabled=config.storage.delete.enabled,
        max_batch=config.grpc.maxbatch,
        revalidator=build_revalidator(config),
    )


async def check_components(config: Config) -> None:
    """Build (then close) the cache and backend, so ``--check-config`` refuses what start would.

    Nothing connects here: the checks are the ones each component makes of its section.
    """
    statter = build_statter(config)
    await statter.close()


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
        self.call_logger = CallLogger()
        authorizer = security.build_authorizer(config.auth)
        #: Whether the authorizer checks tokens, so reads each call's metadata.
        self.reads_tokens = authorizer.enabled
        self.servicer = DescriptorServicer(
            self.statter, authorizer=authorizer, observer=security.audited(self.observe, authorizer)
        )
        self.metrics.track_inflight(lambda: self.servicer.inflight)
        if isinstance(self.statter.backend, bounded.BoundedBackend):
            self.metrics.register(BackendBoundsCollector(self.statter.backend))
        near = getattr(innermost(self.statter.cache), "near", None) if kind == "redis" else None
        if near is not None:  # the Redis cache's near cache: its counters, read at scrape time
            from .caches.nearcache import NearCacheCollector

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
        self.endpoint = (
            MetricsEndpoint(registry, debug.addr, debug.prometheus.path)
            if debug.addr and debug.prometheus.enabled
            else None
        )
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self.health_server: grpc.aio.Server | None = None
        self.health_port = 0
        self._stopping = asyncio.Event()

    def observe(
        self, method: str, code: grpc.StatusCode, seconds: float, request: Any, *, context: Context, reason: str
    ) -> None:
        """The servicer's ``observer`` hook: per-RPC metrics and the call log."""
        self.metrics.observe_call(method, code, seconds)
        self.call_logger(method, code, seconds, request, context=context, reason=reason)

    async def start(self) -> int:
        g = self.config.grpc
        server = grpc.aio.server(
            options=server_options(g),
            maximum_concurrent_rpcs=g.maxconcurrentcalls or None,
            interceptors=(
                ObservingInterceptor(
                    self.metrics.rpcs,
                    self.tracing.tracer,
                    hand_metadata=self.reads_tokens,
                ),
            ),
        )
        server.add_generic_rpc_handlers((self.servicer.generic_handler(),))
        self.health.add_to(server)
        reflection.enable_server_reflection(
            (SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server,
        )
        credentials = security.server_credentials(g.tls)
        check_bindable(g.addr, "grpc.addr", reuseport=g.workers > 1)
        try:
            if credentials is not None:
                self.port = server.add_secure_port(g.addr, credentials)
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
            ("mutual" if g.tls.clientcas else "on") if credentials is not None else "off",
            security.describe_auth(self.servicer.authorizer),
        )
        return self.port

    def request_stop(self) -> None:
        self._stopping.set()

    async def wait(self) -> None:
        await self._stopping.wait()

    async def drain(self, grace: float | None = None) -> None:
        """Refuse new calls, let the calls in flight finish, then stop.

        No call the server received is lost: grpcio cancels the calls it has received
        but not yet handed to a handler when the server stops, so the server keeps
        answering ``SERVER_DRAINING`` (which clients retry on another replica) until
        no call has arrived for :data:`DRAIN_QUIET` seconds and none is in flight,
        within ``grpc.drain``; only then does it stop.
        """
        grace = self.config.grpc.drain if grace is None else grace
        log.info("draining: refusing new calls, waiting for %d in flight", self.servicer.inflight)
        self.servicer.draining = True
        await self.health.drain()
        deadline = time.monotonic() + grace
        quiet = min(DRAIN_QUIET, grace)
        while time.monotonic() < deadline:
            now = time.monotonic()
            if not self.servicer.inflight and now - max(self.servicer.last_arrival, deadline - grace) >= quiet:
                break
            await asyncio.sleep(0.01)
        if self.server is not None:
            await self.server.stop(max(0.0, deadline - time.monotonic()))
        if self.health_server is not None:
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
    security.install_reload(loop, server.servicer.authorizer)
    await server.start()
    await server.wait()
    await server.drain()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="descriptor-server",
        description="Serve the blob descriptor service (descriptor.v1.BlobDescriptorService) over gRPC.",
    )
    parser.add_argument("--version", action=VersionAction, help="print the version and build information, and exit")
    parser.add_argument("--config", metavar="FILE", help="YAML configuration (distribution-shaped)")
    parser.add_argument(
        "--check-config",
        metavar="FILE",
        help="validate FILE, print the effective config (secrets masked) and exit",
    )
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="serve from N processes sharing the port with SO_REUSEPORT (overrides grpc.workers)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except ConfigError as err:  # the one place a config error is reported
        err.report()
        return 2


def run(args: argparse.Namespace) -> int:
    """Check or serve, as ``args`` say; a bad configuration raises :class:`ConfigError`."""
    config = load(args.check_config or args.config)
    try:
        return _run(args, config)
    except ConfigError as err:  # found at start (a cache, a listener): named as written
        raise as_written(err, config.deprecated) from None


def _run(args: argparse.Namespace, config: Config) -> int:
    security.check_files(config)
    check_tracing(os.environ)
    warning = config.deprecation_warning()
    if args.check_config:
        if warning:
            print(f"descriptor-server: {warning}", file=sys.stderr, flush=True)
        asyncio.run(check_components(config))
        print(yaml.safe_dump(to_dict(config), sort_keys=False), end="")
        return 0
    if args.workers is not None:
        if args.workers < 1:
            raise ConfigError("grpc.workers", "must be >= 1 (--workers)")
        config = dataclasses.replace(config, grpc=dataclasses.replace(config.grpc, workers=args.workers))
        check_workers(config)
    setup_logging(config.log)
    if warning:
        log.warning("%s", warning)  # once, before any worker starts
    if config.grpc.workers > 1:
        return workers.run_workers(config, serve)
    with contextlib.suppress(KeyboardInterrupt):  # signal handlers catch SIGINT
        asyncio.run(serve(config))
    exit_past_stuck_threads()
    return 0


def exit_past_stuck_threads(timeout: float = 2.0) -> None:
    """Exit 0 now if a worker thread is still blocked after the drain.

    A backend call stuck in a thread for good (a hung NFS mount, a FIFO as a link
    file) would otherwise keep the interpreter from exiting, which joins every
    worker thread without a timeout: a drained server must still exit.
    """
    deadline = time.monotonic() + timeout
    others = [t for t in threading.enumerate() if t is not threading.current_thread() and not t.daemon]
    for thread in others:
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in others if t.is_alive()]
    if stuck:
        log.warning("exiting with %d threads still blocked: %s", len(stuck), ", ".join(stuck))
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
