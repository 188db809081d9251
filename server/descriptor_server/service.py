"""The gRPC servicer: a thin adapter from wire messages to the cached statter.

Handlers take the raw request bytes and decode them here, so that a body that does
not decode answers INVALID_ARGUMENT / ``REQUEST_INVALID`` (grpcio's own deserializer
would answer UNKNOWN), and return serialized bytes. Every error leaves as a status
carrying a ``google.rpc.ErrorInfo`` detail, from the one table in
``descriptor_client.errors``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from descriptor_client._proto.descriptor.v1 import descriptor_pb2 as pb
from descriptor_client.descriptor import Descriptor
from descriptor_client.errors import (
    DescriptorError,
    RequestInvalidError,
    ServerDrainingError,
    to_status_proto,
)
from google.protobuf.message import DecodeError

from .statter import CachedBlobStatter

log = logging.getLogger(__name__)

SERVICE_NAME = "descriptor.v1.BlobDescriptorService"

Handler = Callable[[bytes, grpc.aio.ServicerContext[Any, Any]], Awaitable[bytes]]

#: Called before a request is decoded: (method name, context); raises
#: UnauthenticatedError / PermissionDeniedError to refuse the call.
Authorizer = Callable[[str, grpc.aio.ServicerContext[Any, Any]], None]

#: Called after every call: (method name, status code, seconds, decoded request or None).
Observer = Callable[[str, grpc.StatusCode, float, Any], None]


def status_trailers(err: DescriptorError) -> tuple[tuple[str, bytes | str], ...]:
    """The trailing metadata that carries an error's google.rpc.Status."""
    return (("grpc-status-details-bin", to_status_proto(err).SerializeToString()),)


async def abort(context: grpc.aio.ServicerContext[Any, Any], err: DescriptorError) -> None:
    """End the call with the error's status, message and ErrorInfo detail."""
    await context.abort(err.code, err.message, status_trailers(err))


def _pb_descriptor(desc: Descriptor) -> pb.Descriptor:
    return pb.Descriptor(media_type=desc.media_type, digest=desc.digest, size=desc.size)


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

    # -- handlers (request bytes -> response bytes) -------------------------------

    async def stat(self, request: pb.StatRequest) -> bytes:
        desc = await self.statter.stat(request.digest, request.repository)
        return pb.StatResponse(descriptor=_pb_descriptor(desc)).SerializeToString()

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
        results = await self.statter.batch_stat(request.digests, request.repository)
        resp = pb.BatchStatResponse()
        items = resp.results
        for digest, result in zip(request.digests, results, strict=True):
            if isinstance(result, Descriptor):
                items.add(digest=digest, descriptor=_pb_descriptor(result))
            else:
                items.add(digest=digest, status=to_status_proto(result))
        return resp.SerializeToString()

    async def get_metrics(self, request: pb.GetMetricsRequest) -> bytes:
        m = self.statter.metrics
        return pb.GetMetricsResponse(
            requests=m.requests, hits=m.hits, misses=m.misses, errors=m.errors
        ).SerializeToString()

    # -- wiring -------------------------------------------------------------------

    def _wrap(self, name: str, message: type[Any], fn: Callable[[Any], Awaitable[bytes]]) -> Handler:
        parse = message.FromString

        async def handler(body: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            request: Any = None
            self.inflight += 1
            try:
                if self.draining:
                    raise ServerDrainingError("server is draining; retry another replica")
                if self.authorizer is not None:
                    self.authorizer(name, context)
                try:
                    request = parse(body)
                except DecodeError:
                    raise RequestInvalidError(
                        f"request body does not decode as {message.DESCRIPTOR.full_name}"
                    ) from None
                return await fn(request)
            except DescriptorError as err:
                code = err.code
                await abort(context, err)
            except Exception:
                code = grpc.StatusCode.INTERNAL
                log.exception("unexpected error in %s", name)
                await context.abort(grpc.StatusCode.INTERNAL, "internal error")
            finally:
                self.inflight -= 1
                if self.observer is not None:
                    self.observer(name, code, time.perf_counter() - start, request)
            raise AssertionError("unreachable")  # pragma: no cover - abort raises

        return handler

    def handlers(self) -> dict[str, Handler]:
        """Method name -> bytes-in, bytes-out handler."""
        return {
            "Stat": self._wrap("Stat", pb.StatRequest, self.stat),
            "SetDescriptor": self._wrap("SetDescriptor", pb.SetDescriptorRequest, self.set_descriptor),
            "Clear": self._wrap("Clear", pb.ClearRequest, self.clear),
            "BatchStat": self._wrap("BatchStat", pb.BatchStatRequest, self.batch_stat),
            "GetMetrics": self._wrap("GetMetrics", pb.GetMetricsRequest, self.get_metrics),
        }

    def generic_handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {name: grpc.unary_unary_rpc_method_handler(fn) for name, fn in self.handlers().items()},
        )
