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

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeAlias

import grpc
from descriptor_client._proto.descriptor.v1 import descriptor_pb2 as pb
from descriptor_client.descriptor import Descriptor
from descriptor_client.errors import (
    BackendUnavailableError,
    DescriptorError,
    RequestInvalidError,
    ResourceExhaustedError,
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
Handler = Callable[[Any, Context], Awaitable[bytes]]

#: Called once the request is decoded, before the handler: (method name, request,
#: context); raises UnauthenticatedError / PermissionDeniedError to refuse the call.
#: One with a ``needed(method) -> bool`` method is called only for the methods it needs.
Authorizer = Callable[[str, Any, Context], None]

#: Called when a call starts, before its request message is read: (method name,
#: context); raises UnauthenticatedError to refuse a call whose metadata carries no
#: acceptable credentials, so that such a call costs nothing more.
Authenticator = Callable[[str, Context], Awaitable[None]]


async def read_request(context: Context, timeout: float) -> bytes:
    """The call's one request message, waited for at most ``timeout`` seconds (0: no bound).

    Handlers are registered request-streaming so that they run as soon as a call's
    headers arrive (grpcio runs a unary handler only once the message has come, and
    nothing bounds that wait): a call that never sends its request ends here with
    INVALID_ARGUMENT / ``REQUEST_INVALID`` instead of holding its memory for good.
    One timer for this call: the servicer's handlers use :class:`RequestWait` instead.
    """
    if timeout <= 0:
        return _body(await context.read())
    task = asyncio.current_task()
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        if task is not None:
            task.cancel()

    timer = asyncio.get_running_loop().call_later(timeout, expire)
    try:
        body = await context.read()
    except asyncio.CancelledError:
        if not expired:
            raise
        raise _no_request(timeout) from None
    finally:
        timer.cancel()
    return _body(body)


EOF = grpc.aio.EOF


def _body(body: Any) -> bytes:
    if body is EOF:
        raise RequestInvalidError("the call ended without a request message")
    data: bytes = body
    return data


def _no_request(timeout: float) -> RequestInvalidError:
    return RequestInvalidError(f"no request message within {timeout:g}s of the call's start (grpc.requesttimeout)")


class RequestWait:
    """:func:`read_request` for every call of the servicer, with one timer for them all.

    A timer per call (``call_later``, then ``cancel``) costs each call a push into the
    event loop's heap of timers, compared in Python, and its removal later: about 10 µs
    of server CPU a call, 5% of a Stat hit, where a call's request almost always comes
    with its headers. Instead each waiting call is noted with its start, and one sweep
    every tenth of ``timeout`` (only while calls wait) ends those waiting longer: a call
    that never sends its request ends between ``timeout`` and 1.1 times it.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.period = timeout / 10
        #: Calls waiting for their request -> when they began to wait; in that order.
        self._waiting: dict[asyncio.Task[Any], float] = {}
        #: Calls the sweep has cancelled, until their read sees it.
        self._expired: set[asyncio.Task[Any]] = set()
        self._sweep_at: asyncio.TimerHandle | None = None

    async def read(self, context: Context, since: float | None = None) -> bytes:
        """The call's request; ``since``: when the call began (``time.monotonic()``), now if None."""
        if self.timeout <= 0:
            return _body(await context.read())
        task = asyncio.current_task()
        assert task is not None
        self._waiting[task] = time.monotonic() if since is None else since
        if self._sweep_at is None:
            self.arm()
        try:
            body = await context.read()
        except asyncio.CancelledError:
            if task not in self._expired:
                raise
            raise _no_request(self.timeout) from None
        finally:
            if self._waiting.pop(task, None) is None:
                self._expired.discard(task)
        return _body(body)

    def arm(self) -> None:
        """Schedule the next sweep (none is scheduled)."""
        self._sweep_at = asyncio.get_running_loop().call_later(self.period, self._sweep)

    def _sweep(self) -> None:
        self._sweep_at = None
        waiting = self._waiting
        cutoff = time.monotonic() - self.timeout
        while waiting:
            task, since = next(iter(waiting.items()))  # the longest waiting
            if since > cutoff:
                break
            del waiting[task]
            self._expired.add(task)
            task.cancel()
        if waiting:
            self._sweep_at = asyncio.get_running_loop().call_later(self.period, self._sweep)


class Observer(Protocol):
    """Called after every call: method name, status code, seconds, decoded request or None,
    the call's context, and the ErrorInfo reason ("" when there is none)."""

    def __call__(
        self, method: str, code: grpc.StatusCode, seconds: float, request: Any, *, context: Context, reason: str
    ) -> None: ...


#: An observer bound to one method: (status code, seconds, decoded request or None,
#: context, ErrorInfo reason). An observer with ``bind(method) -> BoundObserver`` is
#: bound once per method as the handlers are built, so a call passes no method name
#: and no keywords.
BoundObserver = Callable[[grpc.StatusCode, float, Any, Context, str], None]


def bound_observer(observer: Observer, method: str) -> BoundObserver:
    """``observer`` for the calls of ``method``: its own ``bind`` where it has one."""
    bind: Callable[[str], BoundObserver] | None = getattr(observer, "bind", None)
    if bind is not None:
        return bind(method)

    def observe(code: grpc.StatusCode, seconds: float, request: Any, context: Context, reason: str) -> None:
        observer(method, code, seconds, request, context=context, reason=reason)

    return observe


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
        authenticator: Authenticator | None = None,
        request_timeout: float = 0.0,
        max_calls: int = 0,
        started: Mapping[str, list[int]] | None = None,
    ) -> None:
        self.statter = statter
        self.authorizer = authorizer
        self.observer = observer
        #: Method name -> its ``grpc_server_started_total`` counter, counted as a call starts.
        self.started: Mapping[str, list[int]] = started if started is not None else {}
        #: Refuses, from the metadata alone, calls without acceptable credentials.
        self.authenticator = authenticator
        #: grpc.requesttimeout: how long a call may wait for its request message.
        self.request_timeout = request_timeout
        self._request = RequestWait(request_timeout)
        #: grpc.maxconcurrentcalls: calls handled at once (their request received); 0 = no limit.
        self.max_calls = max_calls
        self.draining = False
        #: Calls that have started and not ended (waiting for their request, or handled).
        self.inflight = 0
        #: Of those, the calls whose request has arrived (what grpc.maxconcurrentcalls bounds).
        self.handling = 0
        #: time.monotonic() of the last call that reached a handler (for the drain's quiet window)
        self.last_arrival = 0.0
        self.encoder = ResponseEncoder()
        #: (worker index, worker count) that GetMetrics reports; the app sets it with --workers.
        self.worker = (0, 1)

    # -- handlers (decoded request -> response bytes) -----------------------------

    async def stat(self, request: pb.StatRequest) -> bytes:
        digest, repository = request.digest, request.repository
        desc = self.statter.peek(digest, repository)
        return self.encoder.stat_response(desc if desc is not None else await self.statter.stat(digest, repository))

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
        # Stat (the hit path) calls the statter itself: one coroutine less than self.stat,
        # and none for a hit the statter answers synchronously (peek).
        stat = self.statter.stat if rpc.verb == "stat" else None
        peek = self.statter.peek
        encode = self.encoder.stat_response
        parse = message.FromString

        read = self._request.read
        authenticator, authorizer = self.authenticator, self.authorizer
        observe = bound_observer(self.observer, name) if self.observer is not None else None
        needed = getattr(authorizer, "needed", None)
        if needed is not None and not needed(name):
            authorizer = None
        ok, monotonic = grpc.StatusCode.OK, time.monotonic
        started = self.started.get(name, [0])

        async def handler(_requests: Any, context: Context) -> bytes:
            # Runs when the call's headers arrive: refusals that need no request
            # (draining, credentials) answer before any message is read. Written out
            # flat for the hit path (one clock read): every call, attribute look-up and
            # try block here is paid by every call.
            start = self.last_arrival = monotonic()
            started[0] += 1
            code = ok
            reason = ""
            request: Any = None
            handling = False
            self.inflight += 1
            try:
                if self.draining:
                    raise ServerDrainingError("server is draining; retry another replica")
                if authenticator is not None:
                    await authenticator(name, context)
                body = await read(context, start)
                if self.draining:  # began draining while the request was on its way
                    raise ServerDrainingError("server is draining; retry another replica")
                if self.max_calls and self.handling >= self.max_calls:
                    raise ResourceExhaustedError(
                        f"{self.handling} calls in progress, at most {self.max_calls} (grpc.maxconcurrentcalls)"
                    )
                self.handling += 1
                handling = True
                try:
                    request = parse(body)
                except DecodeError:
                    raise RequestInvalidError(
                        f"request body does not decode as {message.DESCRIPTOR.full_name}"
                    ) from None
                if authorizer is not None:
                    authorizer(name, request, context)
                if stat is not None:
                    digest, repository = request.digest, request.repository
                    desc = peek(digest, repository)
                    return encode(desc if desc is not None else await stat(digest, repository))
                return await fn(request)
            except DescriptorError as err:
                code, reason = err.code, err.reason
                await abort(context, err)
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception:
                code = grpc.StatusCode.INTERNAL
                log.exception("unexpected error in %s", name)
                await context.abort(grpc.StatusCode.INTERNAL, "internal error")
            finally:
                self.inflight -= 1
                if handling:
                    self.handling -= 1
                if observe is not None:
                    observe(code, monotonic() - start, request, context, reason)
            raise AssertionError("unreachable")  # pragma: no cover - abort raises

        return handler

    def handlers(self) -> dict[str, Handler]:
        """Method name -> bytes-in, bytes-out handler, for every RPC of the table."""
        return {name: self._wrap(rpc) for name, rpc in RPCS.items()}

    def generic_handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            # Request-streaming on the server side only (the wire is the same): the
            # handler starts at the call's headers, see read_request.
            {name: grpc.stream_unary_rpc_method_handler(fn) for name, fn in self.handlers().items()},
        )
