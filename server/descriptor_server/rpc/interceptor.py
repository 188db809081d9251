"""The other services' metrics, and the server interceptor: spans and the call's metadata.

The service's own methods count ``grpc_server_started_total`` and their handled and
handling series in the servicer (its handler starts at the call's headers, and its
``observer`` hook records the end). The other services of the server
(``grpc.health.v1.Health``, server reflection) register their handlers through
:class:`MeasuringRegistrar`, which wraps each one: started, handled and handling for
each of their calls; a method the server does not implement is not counted (so a client
cannot create series).

:class:`ObservingInterceptor` sees every method of the server. It is installed only
when it has something to do, since an interceptor costs grpcio a few coroutines on
every call (about 3% of a Stat hit's server CPU):

- with tracing on, a SERVER span per call, child of the caller's W3C ``traceparent``
  (standard OpenTelemetry attributes ``rpc.system``, ``rpc.service``, ``rpc.method``,
  ``rpc.grpc.status_code``);
- with token auth on, it hands the call's metadata, which grpc.aio has already
  converted for it, to the handler (:func:`.context.invocation_metadata`): the
  authorizer reads the bearer token from it instead of converting the metadata a
  second time with ``context.invocation_metadata()``.
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import grpc
from descriptor_client.rpcs import RPCS, SERVICE

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


class MeasuringRegistrar:
    """Stands for the server while another service registers: measures that service's calls.

    Passed where grpcio's generated ``add_..._to_server`` expects the server; each handler
    it registers is wrapped to count started, handled and handling for its method.
    """

    def __init__(self, server: grpc.aio.Server, rpcs: RpcCollector) -> None:
        self.server = server
        self.rpcs = rpcs

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self.server.add_generic_rpc_handlers(tuple(_MeasuredGeneric(h, self.rpcs) for h in handlers))

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        """Served as generic handlers instead (grpcio's generated code adds both anyway).

        grpc.aio keeps a task waiting for each registered method, and its serving loop
        waits on all of them with the one for any other call: with health's three
        methods and reflection's one, every call of the service paid an ``asyncio.wait``
        over five tasks instead of one (about 3% of a Stat hit's server CPU).
        """
        self.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))


class _MeasuredGeneric(grpc.GenericRpcHandler):  # type: ignore[misc]
    """A generic handler whose method handlers are measured (each wrapped once)."""

    def __init__(self, inner: grpc.GenericRpcHandler, rpcs: RpcCollector) -> None:
        self.inner = inner
        self.rpcs = rpcs
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self.inner.service(handler_call_details)
        if handler is None:
            return None
        path = handler_call_details.method
        wrapped = self._wrapped.get(path)
        if wrapped is None:  # only the inner handler's methods: bounded
            wrapped = self._wrapped[path] = wrap_handler(handler, path, None, self.rpcs, None, measure=True)
        return wrapped


class ObservingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Spans when tracing is on; the call's metadata for the authorizer (see the module).

    :func:`needed` says whether it has anything to do; without it, leave it out.
    """

    def __init__(self, rpcs: RpcCollector, tracer: Tracer | None = None, *, hand_metadata: bool = True) -> None:
        self.rpcs = rpcs
        self.tracer = tracer
        #: Hand each call's metadata to the handler (for an authorizer that reads tokens).
        self.hand_metadata = hand_metadata
        #: full method path -> the method's name (``Stat``), for the service's own methods
        self._names = {f"/{SERVICE}/{method}": method for method in RPCS}

    @staticmethod
    def needed(tracer: Tracer | None, hand_metadata: bool) -> bool:
        return tracer is not None or hand_metadata

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        path = handler_call_details.method
        name = self._names.get(path)
        if name is not None and self.hand_metadata:
            set_call_metadata(name, handler_call_details.invocation_metadata)
        handler = await continuation(handler_call_details)
        if handler is None or self.tracer is None:
            return handler
        return wrap_handler(handler, path, handler_call_details.invocation_metadata, self.rpcs, self.tracer)


def wrap_handler(
    handler: grpc.RpcMethodHandler,
    path: str,
    metadata: Any,
    rpcs: RpcCollector,
    tracer: Tracer | None,
    *,
    measure: bool = False,
) -> grpc.RpcMethodHandler:
    """``handler`` with its calls measured (``measure``) and/or in a span (``tracer``)."""
    behavior = _behavior(handler)
    kind = _kind(handler)

    def begin() -> tuple[float, tuple[Span, object] | None]:
        if measure:  # the method's series appear at its first call
            rpcs.add_series(path, kind)
            rpcs.start(path)
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

__all__ = ["MeasuringRegistrar", "ObservingInterceptor", "wrap_handler"]
