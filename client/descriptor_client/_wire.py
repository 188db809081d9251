"""Request encoding and response decoding shared by the sync and asyncio clients."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from ._proto.descriptor.v1 import descriptor_pb2 as pb
from .descriptor import Descriptor
from .errors import (
    DescriptorError,
    DescriptorInvalidError,
    DigestInvalidFormatError,
    RepositoryNameInvalidError,
    from_status_proto,
)

SERVICE = "descriptor.v1.BlobDescriptorService"
DEFAULT_TARGET = "127.0.0.1:5051"


@dataclass(frozen=True, slots=True)
class Metrics:
    """The cached statter's counters (CONTRACT section 3)."""

    requests: int
    hits: int
    misses: int
    errors: int


@dataclass(frozen=True, slots=True)
class ClientTLS:
    """TLS options: PEM bytes of the CA, and of a client certificate and key for mTLS."""

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None
    server_name: str | None = None

    @classmethod
    def from_files(
        cls,
        ca: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        server_name: str | None = None,
    ) -> ClientTLS:
        """Read the PEM files named (each optional)."""

        def read(path: str | None) -> bytes | None:
            if path is None:
                return None
            with open(path, "rb") as f:
                return f.read()

        return cls(read(ca), read(cert), read(key), server_name)

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.root_certificates, self.private_key, self.certificate_chain)


# Round robin over every address a target resolves to, and transparent retries of
# UNAVAILABLE (a draining or restarting replica) for every method.
SERVICE_CONFIG = (
    '{"loadBalancingConfig": [{"round_robin": {}}],'
    ' "methodConfig": [{"name": [{"service": "descriptor.v1.BlobDescriptorService"}],'
    ' "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.05s", "maxBackoff": "1s",'
    ' "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]}'
)


def normalize_target(target: str) -> str:
    """Accept ``host:port``, any gRPC target URI, or several ``host:port`` joined by ``,``."""
    if "," in target and "://" not in target and not target.startswith(("ipv4:", "ipv6:")):
        parts = [p.strip() for p in target.split(",") if p.strip()]
        scheme = "ipv6:" if any(p.startswith("[") for p in parts) else "ipv4:"
        return scheme + ",".join(parts)
    return target


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
    return Metrics(resp.requests, resp.hits, resp.misses, resp.errors)


#: (method name, request class, response class) for each RPC.
METHODS: dict[str, tuple[type[Any], type[Any]]] = {
    "Stat": (pb.StatRequest, pb.StatResponse),
    "SetDescriptor": (pb.SetDescriptorRequest, pb.SetDescriptorResponse),
    "Clear": (pb.ClearRequest, pb.ClearResponse),
    "BatchStat": (pb.BatchStatRequest, pb.BatchStatResponse),
    "GetMetrics": (pb.GetMetricsRequest, pb.GetMetricsResponse),
}


def bind_methods(channel: Any) -> dict[str, Callable[..., Any]]:
    """unary_unary callables for every RPC on a sync or aio channel."""
    return {
        name: channel.unary_unary(
            f"/{SERVICE}/{name}",
            request_serializer=req.SerializeToString,
            response_deserializer=resp.FromString,
        )
        for name, (req, resp) in METHODS.items()
    }


class ClientBase:
    """What the sync and asyncio clients share: target, default deadline, token, TLS, methods.

    ``channels`` is the module whose ``secure_channel``/``insecure_channel`` make the
    channel: ``grpc`` for the blocking client, ``grpc.aio`` for the asyncio one.
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
    ) -> None:
        self.target = normalize_target(target or os.environ.get("DESCRIPTOR_TARGET") or DEFAULT_TARGET)
        self.timeout = timeout
        self._metadata = call_metadata(token)
        opts = channel_options(tls, options)
        if tls is not None:
            self._channel = channels.secure_channel(self.target, tls.credentials(), options=opts)
        else:
            self._channel = channels.insecure_channel(self.target, options=opts)
        self._methods = bind_methods(self._channel)

    def _deadline(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout
