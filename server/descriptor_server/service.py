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
    BackendUnavailableError,
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

#: Called once the request is decoded, before the handler: (method name, request,
#: context); raises UnauthenticatedError / PermissionDeniedError to refuse the call.
Authorizer = Callable[[str, Any, grpc.aio.ServicerContext[Any, Any]], None]

#: Called after every call: (method name, status code, seconds, decoded request or None).
Observer = Callable[[str, grpc.StatusCode, float, Any], None]


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


async def abort(context: grpc.aio.ServicerContext[Any, Any], err: DescriptorError) -> None:
    """End the call with the error's status, message and ErrorInfo detail."""
    await context.abort(err.code, err.message, status_trailers(err))


def _pb_descriptor(desc: Descriptor) -> pb.Descriptor:
    return pb.Descriptor(media_type=desc.media_type, digest=desc.digest, size=desc.size)


#: Serialized responses kept per descriptor (bounded; cleared when full).
MEMO_MAX = 16384


def _result_field(result: pb.BatchStatResult) -> bytes:
    """``result`` as field 1 of a BatchStatResponse: tag, varint length, message."""
    body = result.SerializeToString()
    n = len(body)
    head = bytearray(b"\x0a")
    while n > 0x7F:
        head.append((n & 0x7F) | 0x80)
        n >>= 7
    head.append(n)
    return bytes(head) + body


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
        # digest -> (descriptor, its serialized StatResponse / BatchStatResponse field);
        # used only when the answer is that very descriptor (same object, or equal),
        # so an entry can never go stale.
        self._stat_memo: dict[str, tuple[Descriptor, bytes]] = {}
        self._result_memo: dict[str, tuple[Descriptor, bytes]] = {}

    # -- handlers (request bytes -> response bytes) -------------------------------

    async def stat(self, request: pb.StatRequest) -> bytes:
        desc = await self.statter.stat(request.digest, request.repository)
        memo = self._stat_memo
        known = memo.get(desc.digest)
        if known is not None and (known[0] is desc or known[0] == desc):
            if known[0] is not desc:
                memo[desc.digest] = (desc, known[1])  # the next hit is an identity check
            return known[1]
        if len(memo) >= MEMO_MAX:
            memo.clear()
        wire = pb.StatResponse(descriptor=_pb_descriptor(desc)).SerializeToString()
        memo[desc.digest] = (desc, wire)
        return wire

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
        # The response is the concatenation of its length-delimited ``results``
        # fields (protobuf wire format), so a hit whose descriptor carries the
        # requested digest reuses the bytes memoised for that descriptor.
        # One list of str objects: each later pass reuses their cached hashes (the
        # protobuf container would make a fresh str at every access).
        digests = list(request.digests)
        results = await self.statter.batch_stat(digests, request.repository)
        memo = self._result_memo
        parts: list[bytes] = []
        append = parts.append
        for digest, result, known in zip(digests, results, map(memo.get, digests), strict=True):
            if known is not None and known[0] is result:
                append(known[1])
            elif type(result) is Descriptor and result.digest == digest:
                if known is not None and known[0] == result:
                    memo[digest] = (result, known[1])  # the next hit is an identity check
                    append(known[1])
                    continue
                if len(memo) >= MEMO_MAX:
                    memo.clear()
                wire = _result_field(pb.BatchStatResult(digest=digest, descriptor=_pb_descriptor(result)))
                memo[digest] = (result, wire)
                append(wire)
            elif isinstance(result, Descriptor):
                append(_result_field(pb.BatchStatResult(digest=digest, descriptor=_pb_descriptor(result))))
            else:
                append(_result_field(pb.BatchStatResult(digest=digest, status=to_status_proto(result))))
        return b"".join(parts)

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
