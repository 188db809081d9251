"""Health: the ``grpc.health.v1.Health`` service, the backend probe and readiness.

- The whole server (service ``""``) is SERVING once it listens, NOT_SERVING from the
  start of a drain.
- ``descriptor.v1.BlobDescriptorService`` follows the backend's probe as well: probed
  once before the first answer, then every ``grpc.healthprobeinterval`` seconds; NOT_SERVING
  while the probe fails (``0`` turns the probe off).
- :meth:`Health.listener` is the plaintext, health-only listener on ``grpc.healthaddr``
  that lets probes in when the main port requires TLS client certificates. It shares
  the main server's servicer, so it turns NOT_SERVING on drain too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import grpc
from descriptor_client.rpcs import SERVICE
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ..config import ConfigError
from ..core import loggers
from .interceptor import MeasuringRegistrar

log = logging.getLogger(loggers.SERVER)

Probe = Callable[[], Awaitable[None]]

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def probe_once(probe: Probe, timeout: float) -> str | None:
    """None when the probe passes, else why it failed."""
    try:
        await asyncio.wait_for(probe(), timeout)
    except TimeoutError:
        return f"no answer within {timeout:g}s"
    except Exception as err:
        return str(err) or type(err).__name__
    return None


class Health:
    """The health servicer of one server and the probe loop that drives it."""

    def __init__(self, probe: Probe | None, interval: float) -> None:
        self.servicer = health.aio.HealthServicer()
        #: The service's status as the HTTP health path reports it (read from its thread).
        self.serving = False
        self.probe = probe
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def add_to(self, server: grpc.aio.Server | MeasuringRegistrar) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)

    def listener(self, addr: str) -> tuple[grpc.aio.Server, int]:
        """A (not yet started) plaintext server on ``addr`` serving only health, and its port."""
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        self.add_to(server)
        try:
            port = server.add_insecure_port(addr)
        except RuntimeError as err:
            raise ConfigError("grpc.healthaddr", f"cannot listen on {addr}: {err}") from None
        return server, port

    async def set_serving(self, serving: bool) -> None:
        self.serving = serving
        await self.servicer.set(SERVICE, SERVING if serving else NOT_SERVING)

    async def start(self) -> None:
        """SERVING for the server; for the service, once the first probe has answered."""
        await self.servicer.set("", SERVING)
        if self.probe is None or self.interval <= 0:
            await self.set_serving(True)
            return
        healthy = await self._probe_and_report(healthy=None)
        self._task = asyncio.ensure_future(self._loop(healthy))

    async def _probe_and_report(self, *, healthy: bool | None) -> bool:
        """Probe once; on a change of state, log it and set the service's status."""
        assert self.probe is not None
        failure = await probe_once(self.probe, max(1.0, self.interval))
        now = failure is None
        if now != healthy:
            if failure is not None:
                log.warning("backend probe failed, health NOT_SERVING for %s: %s", SERVICE, failure)
            elif healthy is not None:
                log.info("backend probe passes again, health SERVING for %s", SERVICE)
            await self.set_serving(now)
        return now

    async def _loop(self, healthy: bool) -> None:
        while True:
            await asyncio.sleep(self.interval)
            healthy = await self._probe_and_report(healthy=healthy)

    async def stop_probe(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def drain(self) -> None:
        """Stop probing and answer NOT_SERVING for everything from now on."""
        self.serving = False
        await self.stop_probe()
        await self.servicer.enter_graceful_shutdown()


__all__ = ["Health", "probe_once"]
