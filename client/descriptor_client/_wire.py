"""Request encoding and response decoding shared by the sync and asyncio clients."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from ._proto.descriptor.v1 import descriptor_pb2 as pb
from .descriptor import Descriptor
from .errors import (
    DescriptorError,
    DescriptorInvalidError,
    DigestInvalidFormatError,
    RepositoryNameInvalidError,
    ServerDrainingError,
    UnavailableError,
    from_rpc_error,
    from_status_proto,
)
from .metrics import Metrics
from .rpcs import RPCS, SERVICE
from .tls import ClientTLS

DEFAULT_TARGET = "127.0.0.1:5051"


def service_config() -> str:
    """Round robin over every address a target resolves to; the idempotent RPCs are
    retried on UNAVAILABLE (a draining or restarting replica). Derived from the RPC table."""
    names = [{"service": SERVICE, "method": rpc.name} for rpc in RPCS.values() if rpc.idempotent]
    retry = {
        "maxAttempts": 3,
        "initialBackoff": "0.05s",
        "maxBackoff": "1s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    return json.dumps(
        {
            "loadBalancingConfig": [{"round_robin": {}}],
            "healthCheckConfig": {"serviceName": ""},
            "methodConfig": [{"name": names, "retryPolicy": retry}],
        }
    )


SERVICE_CONFIG = service_config()


def normalize_target(target: str) -> str:
    """Accept ``host:port``, any gRPC target URI, or several ``host:port`` joined by ``,``."""
    if "," in target and "://" not in target and not target.startswith(("ipv4:", "ipv6:")):
        parts = [p.strip() for p in target.split(",") if p.strip()]
        scheme = "ipv6:" if any(p.startswith("[") for p in parts) else "ipv4:"
        return scheme + ",".join(parts)
    return target


def _split_host_port(addr: str) -> tuple[str, str]:
    """``host:port`` or ``[v6]:port`` into host and port (ValueError when there is no port)."""
    if addr.startswith("["):
        host, sep, port = addr[1:].partition("]:")
    else:
        host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"{addr!r} is not HOST:PORT")
    return host, port


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def resolve_target(target: str) -> str:
    """What the channel dials for ``target`` (already normalised by :func:`normalize_target`).

    gRPC's ``ipv4:``/``ipv6:`` list schemes take IP literals only, so the host names of
    a list are resolved here (``getaddrinfo``), once, when the client opens its channel:
    every address of every name joins the round robin. They are not resolved again
    for the life of the client (a name behind which replicas come and go is better
    written ``dns:///name:port``, which gRPC itself re-resolves). A name that does
    not resolve is left out while another does; when none does the client refuses
    to start with :class:`UnavailableError` naming them. A single ``host:port`` and
    any target URI are left to gRPC's own resolver.
    """
    scheme = next((s for s in ("ipv4:", "ipv6:") if target.startswith(s)), None)
    if scheme is None:
        return target
    try:
        parts = [_split_host_port(p) for p in target[len(scheme) :].split(",")]
    except ValueError as err:
        raise UnavailableError(f"target {target!r}: {err}") from None
    if all(_is_ip(host) for host, _ in parts):
        return target
    v4: list[str] = []
    v6: list[str] = []
    failed: list[str] = []
    for host, port in parts:
        if _is_ip(host):
            infos = [(socket.AF_INET6 if ":" in host else socket.AF_INET, host)]
        else:
            try:
                found = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
            except (OSError, UnicodeError) as err:
                failed.append(f"{host}: {getattr(err, 'strerror', None) or err}")
                continue
            infos = [(family, str(sockaddr[0])) for family, _, _, _, sockaddr in found]
        for family, ip in infos:
            if family == socket.AF_INET and f"{ip}:{port}" not in v4:
                v4.append(f"{ip}:{port}")
            elif family == socket.AF_INET6 and f"[{ip}]:{port}" not in v6:
                v6.append(f"[{ip}]:{port}")
    if not v4 and not v6:
        raise UnavailableError(f"target {target!r}: no address for {'; '.join(failed)}")
    # One list holds one family: IPv4 when there is any (an IPv6 address joins as
    # IPv4-mapped only when IPv4 addresses are missing altogether).
    if v4 and not v6:
        return "ipv4:" + ",".join(v4)
    if v6 and not v4:
        return "ipv6:" + ",".join(v6)
    return "ipv6:" + ",".join([f"[::ffff:{a.rpartition(':')[0]}]:{a.rpartition(':')[2]}" for a in v4] + v6)


def channel_options(tls: ClientTLS | None, extra: Sequence[tuple[str, Any]] = ()) -> list[tuple[str, Any]]:
    opts: list[tuple[str, Any]] = [
        ("grpc.service_config", SERVICE_CONFIG),
        ("grpc.enable_retries", 1),
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ]
    if tls is not None and tls.server_name:
        opts.append(("grpc.ssl_target_name_override", tls.server_name))
    # gRPC honours the first occurrence of a key, so a caller's option replaces ours.
    overridden = {key for key, _ in extra}
    return [opt for opt in opts if opt[0] not in overridden] + list(extra)


def call_metadata(token: str | None) -> tuple[tuple[str, str], ...] | None:
    if token is None:
        token = os.environ.get("DESCRIPTOR_TOKEN") or None
    return (("authorization", f"Bearer {token}"),) if token else None


def descriptor_of(msg: pb.Descriptor) -> Descriptor:
    return Descriptor(msg.media_type, msg.digest, msg.size)


def to_pb(desc: Descriptor) -> pb.Descriptor:
    """The wire descriptor; one the wire cannot carry (size beyond int64, unpaired
    surrogates) is refused as DESCRIPTOR_INVALID, as the server would refuse it."""
    try:
        return pb.Descriptor(media_type=desc.media_type, digest=desc.digest, size=desc.size)
    except ValueError as err:  # protobuf: "Value out of range", UnicodeEncodeError
        raise DescriptorInvalidError(f"descriptor cannot be sent: {err}") from None


def _sendable(text: str) -> bool:
    """False for text the wire cannot carry (an unpaired surrogate is not UTF-8)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_text(digest: str, repository: str) -> None:
    """Refuse unsendable text with the error a server gives such a digest or name."""
    if not _sendable(digest):
        raise DigestInvalidFormatError("invalid digest: not UTF-8 text")
    if not _sendable(repository):
        raise RepositoryNameInvalidError("invalid repository name: not UTF-8 text")


def stat_request(digest: str, repository: str) -> pb.StatRequest:
    _check_text(digest, repository)
    return pb.StatRequest(digest=digest, repository=repository)


def set_request(digest: str, descriptor: Descriptor, repository: str) -> pb.SetDescriptorRequest:
    _check_text(digest, repository)
    return pb.SetDescriptorRequest(digest=digest, descriptor=to_pb(descriptor), repository=repository)


def clear_request(digest: str, repository: str) -> pb.ClearRequest:
    _check_text(digest, repository)
    return pb.ClearRequest(digest=digest, repository=repository)


def revalidate_request(digest: str, repository: str) -> pb.RevalidateRequest:
    _check_text(digest, repository)
    return pb.RevalidateRequest(digest=digest, repository=repository)


def batch_request(digests: Iterable[str], repository: str) -> pb.BatchStatRequest:
    """An unsendable digest goes as ``""``, which the server fails as that item alone
    (DIGEST_INVALID_FORMAT), just as it would fail the digest itself."""
    items = list(digests)
    _check_text("", repository)
    try:
        return pb.BatchStatRequest(digests=items, repository=repository)
    except UnicodeEncodeError:
        return pb.BatchStatRequest(digests=[d if _sendable(d) else "" for d in items], repository=repository)


def batch_results(resp: pb.BatchStatResponse) -> list[Descriptor | DescriptorError]:
    out: list[Descriptor | DescriptorError] = []
    for item in resp.results:
        if item.WhichOneof("result") == "descriptor":
            out.append(descriptor_of(item.descriptor))
        else:
            out.append(from_status_proto(item.status))
    return out


def metrics_of(resp: pb.GetMetricsResponse) -> Metrics:
    return Metrics(resp.requests, resp.hits, resp.misses, resp.errors, resp.worker, max(resp.workers, 1))


#: grpc.health.v1's Check method.
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
#: ``grpc.health.v1.HealthCheckResponse.ServingStatus``, by number.
SERVING_STATUSES = ("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")


def _health_messages() -> tuple[type[Any], type[Any]]:
    """``HealthCheckRequest`` and ``HealthCheckResponse`` of ``grpc/health/v1/health.proto``.

    Built in a private descriptor pool from the two messages' field numbers, so the
    client needs no ``grpcio-health-checking`` (a server dependency) and cannot clash
    with that package's registration of the same file in the default pool.
    """
    fd = descriptor_pb2.FileDescriptorProto(name="grpc/health/v1/health.proto", package="grpc.health.v1")
    fd.syntax = "proto3"
    field = descriptor_pb2.FieldDescriptorProto
    request = fd.message_type.add(name="HealthCheckRequest")
    request.field.add(name="service", number=1, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    response = fd.message_type.add(name="HealthCheckResponse")
    statuses = response.enum_type.add(name="ServingStatus")
    for number, status in enumerate(SERVING_STATUSES):
        statuses.value.add(name=status, number=number)
    response.field.add(
        name="status",
        number=1,
        type=field.TYPE_ENUM,
        type_name=".grpc.health.v1.HealthCheckResponse.ServingStatus",
        label=field.LABEL_OPTIONAL,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName("grpc.health.v1.HealthCheckRequest")),
        message_factory.GetMessageClass(pool.FindMessageTypeByName("grpc.health.v1.HealthCheckResponse")),
    )


HealthCheckRequest, HealthCheckResponse = _health_messages()


def health_request(service: str) -> Any | None:
    """The request for ``service``; None when the name cannot be sent (no server knows it)."""
    return HealthCheckRequest(service=service) if _sendable(service) else None


def health_status(resp: Any | None) -> str:
    """The status name of a health answer; None (the server knows no such service) is
    ``SERVICE_UNKNOWN``."""
    if resp is None:
        return "SERVICE_UNKNOWN"
    number = int(resp.status)
    return SERVING_STATUSES[number] if 0 <= number < len(SERVING_STATUSES) else "UNKNOWN"


def bind_methods(channel: Any) -> dict[str, Callable[..., Any]]:
    """unary_unary callables for every RPC of the table, on a sync or aio channel."""
    return {
        name: channel.unary_unary(
            rpc.path,
            request_serializer=rpc.request.SerializeToString,
            response_deserializer=rpc.response.FromString,
        )
        for name, rpc in RPCS.items()
    }


def trace_interceptors(channels: Any) -> list[Any]:
    """The channel interceptors that propagate trace context (``[]`` without OpenTelemetry)."""
    from . import tracing

    return tracing.sync_interceptors() if channels is grpc else tracing.aio_interceptors()


class ClientBase:
    """What the sync and asyncio clients share: target, default deadline, token, TLS, methods.

    ``channels`` is the module whose ``secure_channel``/``insecure_channel`` make the
    channel: ``grpc`` for the blocking client, ``grpc.aio`` for the asyncio one. The
    blocking client opens its channel here (``lazy=False``); the asyncio one on first
    use, inside the event loop that runs the call (:meth:`_open`).
    """

    def __init__(
        self,
        target: str | None,
        *,
        timeout: float | None,
        token: str | None,
        tls: ClientTLS | None,
        options: Sequence[tuple[str, Any]],
        channels: Any,
        lazy: bool = False,
    ) -> None:
        self.target = normalize_target(target or os.environ.get("DESCRIPTOR_TARGET") or DEFAULT_TARGET)
        #: What the channel dials: ``target`` with the host names of a list resolved.
        self.dial_target = resolve_target(self.target)
        self.timeout = timeout
        self._metadata = call_metadata(token)
        self._tls = tls
        self._options = channel_options(tls, options)
        if tls is not None and not tls.server_name and self.dial_target != self.target:
            # The certificates are checked against the first host name of the list,
            # not against the IP addresses it resolved to (ClientTLS.server_name overrides).
            first = _split_host_port(self.target.split(":", 1)[1].split(",")[0])[0]
            self._options.append(("grpc.ssl_target_name_override", first))
        self._channels = channels
        self._channel: Any = None
        self._methods: dict[str, Callable[..., Any]] = {}
        self._health: Any = None
        if not lazy:
            self._open()

    def _open(self) -> None:
        """Make the channel and bind the methods (the asyncio client: in the running loop)."""
        channels = self._channels
        # The caller's trace context on every call, when OpenTelemetry is installed.
        interceptors = trace_interceptors(channels)
        extra = {"interceptors": interceptors} if interceptors and channels is not grpc else {}
        if self._tls is not None:
            self._channel = channels.secure_channel(
                self.dial_target, self._tls.credentials(), options=self._options, **extra
            )
        else:
            self._channel = channels.insecure_channel(self.dial_target, options=self._options, **extra)
        if interceptors and channels is grpc:
            self._channel = grpc.intercept_channel(self._channel, *interceptors)
        self._methods = bind_methods(self._channel)
        self._health = self._channel.unary_unary(
            HEALTH_CHECK,
            request_serializer=HealthCheckRequest.SerializeToString,
            response_deserializer=HealthCheckResponse.FromString,
        )

    def _error(self, err: grpc.RpcError) -> DescriptorError:
        """The typed error of a failed call, with a hint when a plaintext client's
        connection was closed on it (what a TLS port does to a plaintext client)."""
        error = from_rpc_error(err)
        if self._tls is None and error.code == grpc.StatusCode.UNAVAILABLE and "Socket closed" in error.message:
            error.message += (
                " (the server closed the plaintext connection: if it serves TLS, give the client its CA:"
                " ClientTLS, descriptorctl --tls-ca, $DESCRIPTOR_TLS_CA)"
            )
            error.args = (error.message,)
        return error

    def _deadline(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout


#: Calls in all for a call answered ``SERVER_DRAINING`` (each call of an idempotent RPC
#: also makes gRPC's own retry attempts, :func:`service_config`).
DRAIN_ATTEMPTS = 5


class CallRetry:
    """The deadline and the drain retries of one call.

    A call answered ``SERVER_DRAINING`` is sent again, whatever the RPC: that answer
    promises the server did nothing, so even a non-idempotent call (SetDescriptor,
    Clear) is safe to repeat, and round robin sends it to another replica. (gRPC's own
    retries of an idempotent call may all land on the draining replica while several
    threads share the channel's picks.) Any other UNAVAILABLE may have come after the
    server acted, and is raised. Every attempt shares the call's one deadline.
    """

    def __init__(self, deadline: float | None) -> None:
        self.until = None if deadline is None else time.monotonic() + deadline
        self.attempt = 0

    def remaining(self) -> float | None:
        return None if self.until is None else max(0.0, self.until - time.monotonic())

    def delay_or_raise(self, err: DescriptorError) -> float:
        """Seconds to wait before the next attempt; raises ``err`` when there is none."""
        delay = 0.05 * (1 << self.attempt)
        self.attempt += 1
        if (
            not isinstance(err, ServerDrainingError)
            or self.attempt >= DRAIN_ATTEMPTS
            or (self.until is not None and time.monotonic() + delay >= self.until)
        ):
            raise err from None
        return delay
