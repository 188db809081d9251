"""The gRPC servicer: a thin adapter from wire messages to the cached statter.

Each handler reads as validate, call, convert: the statter validates and answers, and
:mod:`.encoding` turns the answer into response bytes. The methods, their request
classes and their access rules come from the one RPC table
(:data:`descriptor_client.rpcs.RPCS`). Handlers take the raw request bytes and
decode them here, so that a body that does not decode answers INVALID_ARGUMENT /
``REQUEST_INVALID`` (grpcio's own deserializer would answer UNKNOWN). Every error
leaves as a status carrying a ``google.rpc.ErrorInfo`` detail, from the one table in
:mod:`descriptor_client.errors`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeAlias

import grpc
from descriptor_client._proto.descriptor.v1 import descriptor_pb2 as pb
from descriptor_client.descriptor import Descriptor
from descriptor_client.errors import (
    BackendUnavailableError,
    DescriptorError,
    RequestInvalidError,
    ServerDrainingError,
    to_status_proto,
)
from descriptor_client.rpcs import RPCS, SERVICE, Rpc
from google.protobuf.message import DecodeError

from ..core import loggers
from ..core.statter import CachedBlobStatter
from .encoding import ResponseEncoder

log = logging.getLogger(loggers.SERVICE)

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
Handler = Callable[[bytes, Context], Awaitable[bytes]]

#: Called once the request is decoded, before the handler: (method name, request,
#: context); raises UnauthenticatedError / PermissionDeniedError to refuse the call.
Authorizer = Callable[[str, Any, Context], None]


class Observer(Protocol):
    """Called after every call: method name, status code, seconds, decoded request or None,
    the call's context, and the ErrorInfo reason ("" when there is none)."""

    def __call__(
        self, method: str, code: grpc.StatusCode, seconds: float, request: Any, *, context: Context, reason: str
    ) -> None: ...


#: gRPC's server pushback: a negative value tells a client's retry policy not to retry.
NO_RETRY = ("grpc-retry-pushback-ms", "-1")


def status_trailers(err: DescriptorError) -> tuple[tuple[str, bytes | str], ...]:
    """The trailing metadata that carries an error's google.rpc.Status.

    BACKEND_UNAVAILABLE also carries server pushback, so that clients retrying
    UNAVAILABLE (for a draining replica) do not triple the load on a failing backend.
    """
    details = ("grpc-status-details-bin", to_status_proto(err).SerializeToString())
    if isinstance(err, BackendUnavailableError):
        return (details, NO_RETRY)
    return (details,)


async def abort(context: Context, err: DescriptorError) -> None:
    """End the call with the error's status, message and ErrorInfo detail."""
    await context.abort(err.code, err.message, status_trailers(err))


class DescriptorServicer:
    """Serves ``descriptor.v1.BlobDescriptorService`` from a :class:`CachedBlobStatter`."""

    def __init__(
        self,
        statter: CachedBlobStatter,
        *,
        authorizer: Authorizer | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.statter = statter
        self.authorizer = authorizer
        self.observer = observer
        self.draining = False
        self.inflight = 0
        #: time.monotonic() of the last call that reached a handler (for the drain's quiet window)
        self.last_arrival = 0.0
        self.encoder = ResponseEncoder()
        #: (worker index, worker count) that GetMetrics reports; the app sets it with --workers.
        self.worker = (0, 1)

    # -- handlers (decoded request -> response bytes) -----------------------------

    async def stat(self, request: pb.StatRequest) -> bytes:
        desc = await self.statter.stat(request.digest, request.repository)
        return self.encoder.stat_response(desc)

    async def set_descriptor(self, request: pb.SetDescriptorRequest) -> bytes:
        d = request.descriptor
        await self.statter.set_descriptor(
            request.digest, Descriptor(d.media_type, d.digest, d.size), request.repository
        )
        return b""

    async def clear(self, request: pb.ClearRequest) -> bytes:
        await self.statter.clear(request.digest, request.repository)
        return b""

    async def batch_stat(self, request: pb.BatchStatRequest) -> bytes:
        # One list of str objects: each later pass reuses their cached hashes (the
        # protobuf container would make a fresh str at every access).
        digests = list(request.digests)
        results = await self.statter.batch_stat(digests, request.repository)
        return self.encoder.batch_response(digests, results)

    async def revalidate(self, request: pb.RevalidateRequest) -> bytes:
        desc = await self.statter.revalidate(request.digest, request.repository)
        return pb.RevalidateResponse(
            descriptor=pb.Descriptor(media_type=desc.media_type, digest=desc.digest, size=desc.size)
        ).SerializeToString()

    async def metrics(self, request: pb.GetMetricsRequest) -> bytes:
        m = self.statter.metrics
        worker, workers = self.worker
        return pb.GetMetricsResponse(
            requests=m.requests, hits=m.hits, misses=m.misses, errors=m.errors, worker=worker, workers=workers
        ).SerializeToString()

    def _handler_of(self, rpc: Rpc) -> Callable[[Any], Awaitable[bytes]]:
        """The handler of an RPC of the table: the method named by its verb."""
        handler: Callable[[Any], Awaitable[bytes]] = getattr(self, rpc.verb)
        return handler

    # -- wiring -------------------------------------------------------------------

    def _wrap(self, rpc: Rpc) -> Handler:
        name, message, fn = rpc.name, rpc.request, self._handler_of(rpc)
        parse = message.FromString

        async def handler(body: bytes, context: Context) -> bytes:
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            reason = ""
            request: Any = None
            self.inflight += 1
            self.last_arrival = time.monotonic()
            try:
                if self.draining:
                    raise ServerDrainingError("server is draining; retry another replica")
                try:
                    request = parse(body)
                except DecodeError:
                    raise RequestInvalidError(
                        f"request body does not decode as {message.DESCRIPTOR.full_name}"
                    ) from None
                if self.authorizer is not None:
                    self.authorizer(name, request, context)
                return await fn(request)
            except DescriptorError as err:
                code, reason = err.code, err.reason
                await abort(context, err)
            except Exception:
                code = grpc.StatusCode.INTERNAL
                log.exception("unexpected error in %s", name)
                await context.abort(grpc.StatusCode.INTERNAL, "internal error")
            finally:
                self.inflight -= 1
                if self.observer is not None:
                    self.observer(name, code, time.perf_counter() - start, request, context=context, reason=reason)
            raise AssertionError("unreachable")  # pragma: no cover - abort raises

        return handler

    def handlers(self) -> dict[str, Handler]:
        """Method name -> bytes-in, bytes-out handler, for every RPC of the table."""
        return {name: self._wrap(rpc) for name, rpc in RPCS.items()}

    def generic_handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {name: grpc.unary_unary_rpc_method_handler(fn) for name, fn in self.handlers().items()},
        )
