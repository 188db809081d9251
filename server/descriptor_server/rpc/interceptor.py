"""The server interceptor: every call counted at its start, other services measured, spans.

:class:`ObservingInterceptor` sees every method of the server, including
``grpc.health.v1.Health`` and server reflection:

- ``grpc_server_started_total`` for every call, at its start (one dict lookup and an
  addition for the service's own methods, whose handled/handling series the servicer's
  ``observer`` hook already records);
- handled/handling for the other services' methods (health, reflection), whose handlers
  it wraps; a method the server does not implement is not counted (so a client cannot
  create series);
- with tracing on, a SERVER span per call, child of the caller's W3C ``traceparent``
  (standard OpenTelemetry attributes ``rpc.system``, ``rpc.service``, ``rpc.method``,
  ``rpc.grpc.status_code``). With tracing off no handler of the service is wrapped.

It also hands the call's metadata, which grpc.aio has already converted for it, to the
handler (:func:`.context.invocation_metadata`): the authorizer reads the bearer token from it
instead of converting the metadata a second time with ``context.invocation_metadata()``.
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

from ..observability.metrics import RpcCollector
from .context import set_call_metadata

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]


def _code_of(context: Any, failed: bool) -> grpc.StatusCode:
    """The status a call ended with: what the handler set, else OK (UNKNOWN if it raised)."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):
        for candidate in grpc.StatusCode:
            if candidate.value[0] == code:
                return candidate
    return grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK


def _kind(handler: grpc.RpcMethodHandler) -> str:
    """go-grpc-prometheus's ``grpc_type``."""
    if handler.request_streaming:
        return "bidi_stream" if handler.response_streaming else "client_stream"
    return "server_stream" if handler.response_streaming else "unary"


def _behavior(handler: grpc.RpcMethodHandler) -> Any:
    return handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream


def _rebuild(handler: grpc.RpcMethodHandler, behavior: Any) -> grpc.RpcMethodHandler:
    factory = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[handler.request_streaming, handler.response_streaming]
    rebuilt: grpc.RpcMethodHandler = factory(
        behavior,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
    return rebuilt


class ObservingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Counts every call's start; measures the other services; spans when tracing is on."""

    def __init__(self, rpcs: RpcCollector, tracer: Tracer | None = None, *, hand_metadata: bool = True) -> None:
        self.rpcs = rpcs
        self.tracer = tracer
        #: Hand each call's metadata to the handler (for an authorizer that reads tokens).
        self.hand_metadata = hand_metadata
        #: full method path -> started counter, for the service's own methods
        self._own = rpcs.started_by_path()
        #: full method path -> the method's name (``Stat``), for the service's own methods
        self._names = {path: path.rpartition("/")[2] for path in self._own}

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        path = handler_call_details.method
        started = self._own.get(path)
        if started is not None:
            started[0] += 1
            if self.hand_metadata:
                set_call_metadata(self._names[path], handler_call_details.invocation_metadata)
            if self.tracer is None:
                return await continuation(handler_call_details)
            handler = await continuation(handler_call_details)
            return None if handler is None else self._wrap(handler, path, handler_call_details, measure=False)
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        self.rpcs.add_series(path, _kind(handler))
        self.rpcs.start(path)
        return self._wrap(handler, path, handler_call_details, measure=True)

    # -- wrapping --------------------------------------------------------------------

    def _wrap(
        self,
        handler: grpc.RpcMethodHandler,
        path: str,
        details: grpc.HandlerCallDetails,
        *,
        measure: bool,
    ) -> grpc.RpcMethodHandler:
        behavior = _behavior(handler)
        rpcs, tracer = self.rpcs, self.tracer
        metadata = details.invocation_metadata

        def begin() -> tuple[float, tuple[Span, object] | None]:
            span = _start_span(tracer, path, metadata) if tracer is not None else None
            return time.perf_counter(), span

        def end(start: float, span: tuple[Span, object] | None, context: Any, failed: bool) -> None:
            code = _code_of(context, failed)
            if measure:
                rpcs.observe(path, code, time.perf_counter() - start)
            if span is not None:
                _end_span(*span, code)

        if inspect.isasyncgenfunction(behavior):

            async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
                start, span = begin()
                failed = True
                try:
                    async for item in behavior(request, context):
                        yield item
                    failed = False
                finally:
                    end(start, span, context, failed)

            return _rebuild(handler, streaming)

        async def unary(request: Any, context: Any) -> Any:
            start, span = begin()
            failed = True
            try:
                result = await behavior(request, context)
                failed = False
                return result
            finally:
                end(start, span, context, failed)

        return _rebuild(handler, unary)


def _start_span(tracer: Tracer, path: str, metadata: Any) -> tuple[Span, object]:
    """A SERVER span, child of the caller's context, made current (and the token to undo it)."""
    from opentelemetry import context as otel_context
    from opentelemetry import propagate
    from opentelemetry.trace import SpanKind, set_span_in_context

    carrier = {k: v for k, v in (metadata or ()) if isinstance(v, str)}
    service, _, method = path.lstrip("/").rpartition("/")
    span = tracer.start_span(
        path.lstrip("/"),
        context=propagate.extract(carrier),
        kind=SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
    )
    # The handler's child spans (cache, backend) find it through the context.
    return span, otel_context.attach(set_span_in_context(span))


def _end_span(span: Span, token: object, code: grpc.StatusCode) -> None:
    from opentelemetry import context as otel_context
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code in SERVER_ERRORS:
        span.set_status(Status(StatusCode.ERROR, code.name))
    span.end()
    with contextlib.suppress(Exception):  # a generator finalised in another context
        otel_context.detach(token)  # type: ignore[arg-type]


#: Codes that mark a SERVER span as an error (OpenTelemetry's gRPC conventions).
SERVER_ERRORS = frozenset(
    (
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    )
)

__all__ = ["ObservingInterceptor"]
