"""Wiring and lifecycle: config -> cache + backend -> statter -> gRPC server.

``descriptor-server`` (and ``python -m descriptor_server``) with no arguments serves
the embedded default: in-memory cache, filesystem backend under ``./data``, on
``127.0.0.1:5051``. On SIGTERM or SIGINT it drains: health turns NOT_SERVING, new
calls get UNAVAILABLE / ``SERVER_DRAINING``, calls in flight finish, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

import grpc
import yaml
from descriptor_client._proto.descriptor.v1 import descriptor_pb2
from descriptor_client.protocol import BlobDescriptorService
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from .backends import Backend
from .config import Config, ConfigError, load, to_dict
from .service import SERVICE_NAME, DescriptorServicer
from .statter import CachedBlobStatter

log = logging.getLogger("descriptor_server")


def build_cache(config: Config) -> BlobDescriptorService:
    kind = config.storage.cache.blobdescriptor
    if kind == "inmemory":
        from .caches.inmemory import InMemoryCache

        return InMemoryCache(config.storage.cache.blobdescriptorsize)
    if kind == "redis":
        import importlib

        redis_cache: BlobDescriptorService = importlib.import_module("descriptor_server.caches.redis").from_config(
            config.redis
        )
        return redis_cache
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


def build_statter(config: Config) -> CachedBlobStatter:
    return CachedBlobStatter(
        build_cache(config),
        build_backend(config),
        delete_enabled=config.storage.delete.enabled,
        max_batch=config.grpc.maxbatch,
    )


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with any ``extra=`` fields of the record."""

    _skip = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

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


def setup_logging(config: Config) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if config.log.formatter == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    level = config.log.level.upper()
    root.setLevel("WARNING" if level == "WARN" else level)


class DescriptorServer:
    """The running service: a grpc.aio server with health and reflection, and its drain."""

    def __init__(self, config: Config, statter: CachedBlobStatter | None = None) -> None:
        self.config = config
        self.statter = statter if statter is not None else build_statter(config)
        self.servicer = DescriptorServicer(self.statter)
        self.health = health.aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self._stopping = asyncio.Event()

    def server_options(self) -> list[tuple[str, Any]]:
        g = self.config.grpc
        return [
            ("grpc.so_reuseport", 1 if g.workers > 1 else 0),
            ("grpc.max_receive_message_length", g.maxrecvmsgsize),
        ]

    async def start(self) -> int:
        g = self.config.grpc
        server = grpc.aio.server(
            options=self.server_options(),
            maximum_concurrent_rpcs=g.maxconcurrentcalls or None,
        )
        server.add_generic_rpc_handlers((self.servicer.generic_handler(),))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (
                descriptor_pb2.DESCRIPTOR.services_by_name["BlobDescriptorService"].full_name,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        try:
            self.port = server.add_insecure_port(g.addr)
        except RuntimeError as err:
            raise ConfigError("grpc.addr", f"cannot listen on {g.addr}: {err}") from None
        await server.start()
        self.server = server
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        host = g.addr.rsplit(":", 1)[0]
        log.info(
            "descriptor-server listening on %s:%d (cache %s, backend %s)",
            host,
            self.port,
            self.config.storage.cache.blobdescriptor,
            self.config.storage.backend,
        )
        return self.port

    def request_stop(self) -> None:
        self._stopping.set()

    async def wait(self) -> None:
        await self._stopping.wait()

    async def drain(self, grace: float | None = None) -> None:
        """Refuse new calls, let the calls in flight finish, then stop."""
        grace = self.config.grpc.drain if grace is None else grace
        log.info("draining: refusing new calls, waiting for %d in flight", self.servicer.inflight)
        self.servicer.draining = True
        await self.health.enter_graceful_shutdown()
        deadline = time.monotonic() + grace
        while self.servicer.inflight and time.monotonic() < deadline:  # noqa: ASYNC110 - a counter, not an event
            await asyncio.sleep(0.01)
        if self.server is not None:
            await self.server.stop(max(0.0, deadline - time.monotonic()))
        await self.statter.close()
        log.info("stopped")


async def serve(config: Config) -> None:
    server = DescriptorServer(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.request_stop)
    await server.start()
    await server.wait()
    await server.drain()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="descriptor-server",
        description="Serve the blob descriptor service (descriptor.v1.BlobDescriptorService) over gRPC.",
    )
    parser.add_argument("--config", metavar="FILE", help="YAML configuration (distribution-shaped)")
    parser.add_argument(
        "--check-config",
        metavar="FILE",
        help="validate FILE, print the effective config (secrets masked) and exit",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load(args.check_config or args.config)
    except ConfigError as err:
        print(f"descriptor-server: config error: {err}", file=sys.stderr)
        return 2
    if args.check_config:
        print(yaml.safe_dump(to_dict(config), sort_keys=False), end="")
        return 0
    setup_logging(config)
    try:
        asyncio.run(serve(config))
    except ConfigError as err:
        print(f"descriptor-server: config error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # pragma: no cover - signal handlers catch SIGINT
        pass
    return 0
