"""The blocking client: ``DescriptorClient`` (docs/client.md)."""

from __future__ import annotations

import time
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


class DescriptorClient(ClientBase):
    """A blocking client for ``descriptor.v1.BlobDescriptorService``.

    ``target`` is ``host:port``, a gRPC target URI (``dns:///registry-cache:5051``)
    or several ``host:port`` joined by ``,``; calls are balanced round robin over the
    addresses and retried on UNAVAILABLE. ``timeout`` is the default deadline in
    seconds for every call; each verb also takes ``timeout=``. ``token`` (default
    ``$DESCRIPTOR_TOKEN``) is sent as a bearer token; ``tls`` turns on TLS or mTLS.
    Errors are raised as the typed exceptions of :mod:`descriptor_client.errors`.
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
        super().__init__(target, timeout=timeout, token=token, tls=tls, options=options, channels=grpc)

    def _call(self, name: str, request: Any, timeout: float | None) -> Any:
        retry = CallRetry(self._deadline(timeout))
        while True:
            try:
                return self._methods[name](request, timeout=retry.remaining(), metadata=self._metadata)
            except grpc.RpcError as err:
                time.sleep(retry.delay_or_raise(self._error(err)))

    def stat(self, digest: str, repository: str = "", *, timeout: float | None = None) -> Descriptor:
        """The descriptor of ``digest`` (in ``repository``, or globally)."""
        resp = self._call("Stat", stat_request(digest, repository), timeout)
        return descriptor_of(resp.descriptor)

    def set_descriptor(
        self, digest: str, descriptor: Descriptor, repository: str = "", *, timeout: float | None = None
    ) -> None:
        """Prime the cache with ``descriptor`` under ``digest``."""
        req = set_request(digest, descriptor, repository)
        self._call("SetDescriptor", req, timeout)

    def clear(self, digest: str, repository: str = "", *, timeout: float | None = None) -> None:
        """Remove ``digest`` from the cache and the backend."""
        self._call("Clear", clear_request(digest, repository), timeout)

    def batch_stat(
        self, digests: Iterable[str], repository: str = "", *, timeout: float | None = None
    ) -> list[Descriptor | DescriptorError]:
        """Stat many digests: a Descriptor or the typed error of each, in request order."""
        req = batch_request(digests, repository)
        return batch_results(self._call("BatchStat", req, timeout))

    def revalidate(self, digest: str, repository: str = "", *, timeout: float | None = None) -> Descriptor:
        """Check ``digest`` against the server's backend now, bypassing its cache: the
        descriptor when the backend holds it (the cache is updated); BlobUnknownError
        when it does not (the cache's entries for the scope are removed, never the
        backend's)."""
        resp = self._call("Revalidate", revalidate_request(digest, repository), timeout)
        return descriptor_of(resp.descriptor)

    def metrics(self, *, timeout: float | None = None) -> Metrics:
        """The server's cached-statter counters."""
        return metrics_of(self._call("GetMetrics", pb.GetMetricsRequest(), timeout))

    def health(self, service: str = SERVICE, *, timeout: float | None = None) -> str:
        """The grpc.health.v1 status of ``service`` ("" = the whole server): ``SERVING``,
        ``NOT_SERVING`` (draining, or its backend fails its probe) or ``SERVICE_UNKNOWN``."""
        request = health_request(service)
        if request is None:
            return health_status(None)
        try:
            resp = self._health(request, timeout=self._deadline(timeout), metadata=self._metadata)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return health_status(None)
            raise self._error(err) from None
        return health_status(resp)

    def repository(self, name: str) -> RepositoryClient:
        """A view of this client bound to one repository scope."""
        return RepositoryClient(self, name)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> DescriptorClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class RepositoryClient:
    """``DescriptorClient`` bound to one repository: the same verbs without ``repository``."""

    def __init__(self, client: DescriptorClient, name: str) -> None:
        self.client = client
        self.name = name

    def stat(self, digest: str, repository: str = "", *, timeout: float | None = None) -> Descriptor:
        return self.client.stat(digest, repository or self.name, timeout=timeout)

    def set_descriptor(
        self, digest: str, descriptor: Descriptor, repository: str = "", *, timeout: float | None = None
    ) -> None:
        self.client.set_descriptor(digest, descriptor, repository or self.name, timeout=timeout)

    def clear(self, digest: str, repository: str = "", *, timeout: float | None = None) -> None:
        self.client.clear(digest, repository or self.name, timeout=timeout)

    def revalidate(self, digest: str, repository: str = "", *, timeout: float | None = None) -> Descriptor:
        return self.client.revalidate(digest, repository or self.name, timeout=timeout)

    def batch_stat(self, digests: Iterable[str], *, timeout: float | None = None) -> list[Descriptor | DescriptorError]:
        return self.client.batch_stat(digests, self.name, timeout=timeout)
