"""The asyncio client: ``AsyncDescriptorClient`` (docs/client.md)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any

import grpc

from ._proto.descriptor.v1 import descriptor_pb2 as pb
from ._wire import (
    CallRetry,
    ClientBase,
    batch_request,
    batch_results,
    clear_request,
    descriptor_of,
    health_request,
    health_status,
    metrics_of,
    revalidate_request,
    set_request,
    stat_request,
)
from .descriptor import Descriptor
from .errors import DescriptorError
from .metrics import Metrics
from .rpcs import SERVICE
from .tls import ClientTLS


class AsyncDescriptorClient(ClientBase):
    """An asyncio client for ``descriptor.v1.BlobDescriptorService``.

    ``target`` is ``host:port``, a gRPC target URI (``dns:///registry-cache:5051``)
    or several ``host:port`` joined by ``,``; calls are balanced round robin over the
    addresses and retried on UNAVAILABLE. ``timeout`` is the default deadline in
    seconds for every call; each verb also takes ``timeout=``. ``token`` (default
    ``$DESCRIPTOR_TOKEN``) is sent as a bearer token; ``tls`` turns on TLS or mTLS.
    Errors are raised as the typed exceptions of :mod:`descriptor_client.errors`.

    The channel is made on first use, in the event loop running the call, so a client
    made before ``asyncio.run()`` (or at import time) works; used later from another
    loop (a second ``asyncio.run()``), or after ``close()``, it makes a new channel.
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        timeout: float | None = 10.0,
        token: str | None = None,
        tls: ClientTLS | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        super().__init__(target, timeout=timeout, token=token, tls=tls, options=options, channels=grpc.aio, lazy=True)
        self._loop: asyncio.AbstractEventLoop | None = None

    def _bound(self) -> dict[str, Any]:
        """The methods on a channel of the running loop (made here on first use)."""
        loop = asyncio.get_running_loop()
        if self._channel is None or self._loop is not loop:
            # A channel belongs to the loop it was made in; one from a finished
            # asyncio.run() cannot serve this loop (its close would need that loop).
            self._open()
            self._loop = loop
        return self._methods

    async def _call(self, name: str, request: Any, timeout: float | None) -> Any:
        methods = self._bound()
        retry = CallRetry(self._deadline(timeout))
        while True:
            try:
                return await methods[name](request, timeout=retry.remaining(), metadata=self._metadata)
            except grpc.RpcError as err:
                await asyncio.sleep(retry.delay_or_raise(self._error(err)))

    async def stat(self, digest: str, repository: str = "", *, timeout: float | None = None) -> Descriptor:
        """The descriptor of ``digest`` (in ``repository``, or globally)."""
        resp = await self._call("Stat", stat_request(digest, repository), timeout)
        return descriptor_of(resp.descriptor)

    async def set_descriptor(
        self, digest: str, descriptor: Descriptor, repository: str = "", *, timeout: float | None = None
    ) -> None:
        """Prime the cache with ``descriptor`` under ``digest``."""
        req = set_request(digest, descriptor, repository)
        await self._call("SetDescriptor", req, timeout)

    async def clear(self, digest: str, repository: str = "", *, timeout: float | None = None) -> None:
        """Remove ``digest`` from the cache and the backend."""
        await self._call("Clear", clear_request(digest, repository), timeout)

    async def batch_stat(
        self, digests: Iterable[str], repository: str = "", *, timeout: float | None = None
    ) -> list[Descriptor | DescriptorError]:
        """Stat many digests: a Descriptor or the typed error of each, in request order."""
        req = batch_request(digests, repository)
        return batch_results(await self._call("BatchStat", req, timeout))

    async def revalidate(self, digest: str, repository: str = "", *, timeout: float | None = None) -> Descriptor:
        """Check ``digest`` against the server's backend now, bypassing its cache: the
        descriptor when the backend holds it (the cache is updated); BlobUnknownError
        when it does not (the cache's entries for the scope are removed, never the
        backend's)."""
        resp = await self._call("Revalidate", revalidate_request(digest, repository), timeout)
        return descriptor_of(resp.descriptor)

    async def metrics(self, *, timeout: float | None = None) -> Metrics:
        """The server's cached-statter counters."""
        return metrics_of(await self._call("GetMetrics", pb.GetMetricsRequest(), timeout))

    async def health(self, service: str = SERVICE, *, timeout: float | None = None) -> str:
        """The grpc.health.v1 status of ``service`` ("" = the whole server): ``SERVING``,
        ``NOT_SERVING`` (draining, or its backend fails its probe) or ``SERVICE_UNKNOWN``."""
        self._bound()
        request = health_request(service)
        if request is None:
            return health_status(None)
        try:
            resp = await self._health(request, timeout=self._deadline(timeout), metadata=self._metadata)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return health_status(None)
            raise self._error(err) from None
        return health_status(resp)

    def repository(self, name: str) -> AsyncRepositoryClient:
        """A view of this client bound to one repository scope."""
        return AsyncRepositoryClient(self, name)

    async def close(self) -> None:
        """Close the channel: nothing to do before the first call; a later call opens a new one."""
        channel, loop, self._channel, self._loop = self._channel, self._loop, None, None
        if channel is not None and loop is asyncio.get_running_loop():
            await channel.close()
        # A channel of another loop (a finished asyncio.run()) went with that loop.

    async def __aenter__(self) -> AsyncDescriptorClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class AsyncRepositoryClient:
    """``AsyncDescriptorClient`` bound to one repository: the same verbs without ``repository``."""

    def __init__(self, client: AsyncDescriptorClient, name: str) -> None:
        self.client = client
        self.name = name

    async def stat(self, digest: str, repository: str = "", *, timeout: float | None = None) -> Descriptor:
        return await self.client.stat(digest, repository or self.name, timeout=timeout)

    async def set_descriptor(
        self, digest: str, descriptor: Descriptor, repository: str = "", *, timeout: float | None = None
    ) -> None:
        await self.client.set_descriptor(digest, descriptor, repository or self.name, timeout=timeout)

    async def clear(self, digest: str, repository: str = "", *, timeout: float | None = None) -> None:
        await self.client.clear(digest, repository or self.name, timeout=timeout)

    async def revalidate(self, digest: str, repository: str = "", *, timeout: float | None = None) -> Descriptor:
        return await self.client.revalidate(digest, repository or self.name, timeout=timeout)

    async def batch_stat(
        self, digests: Iterable[str], *, timeout: float | None = None
    ) -> list[Descriptor | DescriptorError]:
        return await self.client.batch_stat(digests, self.name, timeout=timeout)
