"""The one error table: typed exceptions <-> gRPC status + google.rpc.ErrorInfo.

The server turns any :class:`DescriptorError` into a gRPC status carrying an
``ErrorInfo`` detail (``domain = "descriptor.v1"``); the client turns such a status
back into the same exception class. Both directions read :data:`ERROR_TABLE`, so
the two can never drift apart (docs/api.md, Errors).
"""

from __future__ import annotations

from typing import ClassVar

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

DOMAIN = "descriptor.v1"


class DescriptorError(Exception):
    """Base of every error the service and client raise.

    Keeps the gRPC status code and the ``ErrorInfo`` reason, so callers can branch on
    either (``err.code``, ``err.reason``) as well as on the class.
    """

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN
    reason: ClassVar[str] = "UNKNOWN"

    def __init__(self, message: str = "", *, metadata: dict[str, str] | None = None) -> None:
        super().__init__(message or self.reason)
        self.message = message or self.reason
        self.metadata: dict[str, str] = dict(metadata or {})

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}" if self.message != self.reason else self.reason


class BlobUnknownError(DescriptorError):
    """The blob is unknown in this scope."""

    code = grpc.StatusCode.NOT_FOUND
    reason = "BLOB_UNKNOWN"

    @classmethod
    def of(cls, digest: str, repository: str = "") -> BlobUnknownError:
        """The error for ``digest`` unknown in ``repository`` (empty: the global scope)."""
        return cls(f"blob {digest} unknown in {repository}" if repository else f"blob {digest} unknown")


class InvalidArgumentError(DescriptorError):
    """Base of the INVALID_ARGUMENT errors."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"


class DigestInvalidFormatError(InvalidArgumentError):
    """The digest is malformed (no ``:``, bad algorithm syntax, non-lowercase hex)."""

    reason = "DIGEST_INVALID_FORMAT"


class DigestInvalidLengthError(InvalidArgumentError):
    """The hex part has the wrong length for its algorithm."""

    reason = "DIGEST_INVALID_LENGTH"


class DigestUnsupportedError(InvalidArgumentError):
    """The algorithm is well formed but not supported."""

    reason = "DIGEST_UNSUPPORTED"


class DescriptorInvalidError(InvalidArgumentError):
    """The descriptor is invalid (size, media type or digest)."""

    reason = "DESCRIPTOR_INVALID"


class RepositoryNameInvalidError(InvalidArgumentError):
    """The repository name is not a valid OCI distribution name."""

    reason = "REPOSITORY_NAME_INVALID"


class BatchTooLargeError(InvalidArgumentError):
    """More digests than the configured batch limit."""

    reason = "BATCH_TOO_LARGE"


class RequestInvalidError(InvalidArgumentError):
    """The request body does not decode as the request message."""

    reason = "REQUEST_INVALID"


class UnsupportedError(DescriptorError):
    """Deletion is disabled, or the backend cannot do this in this scope."""

    code = grpc.StatusCode.UNIMPLEMENTED
    reason = "UNSUPPORTED"


class UnavailableError(DescriptorError):
    """Base of the UNAVAILABLE errors: retrying later may succeed."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "UNAVAILABLE"


class BackendUnavailableError(UnavailableError):
    """The backend is unreachable or failing."""

    reason = "BACKEND_UNAVAILABLE"


class ServerDrainingError(UnavailableError):
    """The server is draining after SIGTERM/SIGINT."""

    reason = "SERVER_DRAINING"


class DeadlineExceededError(UnavailableError):
    """The call's deadline passed before an answer (client side; no server sends it).

    An :class:`UnavailableError`, so ``except UnavailableError`` covers it (retrying
    later may succeed), with the true code ``DEADLINE_EXCEEDED`` in ``err.code``.
    """

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "DEADLINE_EXCEEDED"


class CallCancelledError(UnavailableError):
    """The call was cancelled before an answer (client side; no server sends it).

    grpcio cancels the calls a server has received but not dispatched when it stops;
    the request may or may not have been acted on. An :class:`UnavailableError`, so
    ``except UnavailableError`` covers it, with the true code ``CANCELLED`` in ``err.code``.
    """

    code = grpc.StatusCode.CANCELLED
    reason = "CANCELLED"


class UnauthenticatedError(DescriptorError):
    """Missing or bad credentials."""

    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "UNAUTHENTICATED"


class PermissionDeniedError(DescriptorError):
    """The credentials lack the scope for this call."""

    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"


class ResourceExhaustedError(DescriptorError):
    """A server limit was reached (for example concurrent calls)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "RESOURCE_EXHAUSTED"


#: The one table, reason -> exception class. Order is irrelevant; reasons are unique.
ERROR_TABLE: dict[str, type[DescriptorError]] = {
    cls.reason: cls
    for cls in (
        BlobUnknownError,
        DigestInvalidFormatError,
        DigestInvalidLengthError,
        DigestUnsupportedError,
        DescriptorInvalidError,
        RepositoryNameInvalidError,
        BatchTooLargeError,
        RequestInvalidError,
        UnsupportedError,
        BackendUnavailableError,
        ServerDrainingError,
        UnauthenticatedError,
        PermissionDeniedError,
        ResourceExhaustedError,
    )
}

#: Fallback classes for statuses that carry no (known) ErrorInfo, by code.
_BY_CODE: dict[grpc.StatusCode, type[DescriptorError]] = {
    grpc.StatusCode.NOT_FOUND: BlobUnknownError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.UNIMPLEMENTED: UnsupportedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.CANCELLED: CallCancelledError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
}

_CODE_VALUES: dict[grpc.StatusCode, int] = {sc: sc.value[0] for sc in grpc.StatusCode}
_CODES_BY_VALUE: dict[int, grpc.StatusCode] = {v: k for k, v in _CODE_VALUES.items()}


def to_status_proto(err: DescriptorError) -> status_pb2.Status:
    """The ``google.rpc.Status`` for an error, with its ``ErrorInfo`` detail."""
    info = error_details_pb2.ErrorInfo(reason=err.reason, domain=DOMAIN, metadata=err.metadata)
    detail = any_pb2.Any()
    detail.Pack(info)
    return status_pb2.Status(code=_CODE_VALUES[err.code], message=err.message, details=[detail])


def error_info(status: status_pb2.Status) -> error_details_pb2.ErrorInfo | None:
    """The first ``ErrorInfo`` detail of a status, if any."""
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


def from_status_proto(status: status_pb2.Status) -> DescriptorError:
    """The typed exception for a ``google.rpc.Status`` (the reverse of :func:`to_status_proto`)."""
    code = _CODES_BY_VALUE.get(status.code, grpc.StatusCode.UNKNOWN)
    info = error_info(status)
    cls: type[DescriptorError] | None = None
    metadata: dict[str, str] = {}
    if info is not None and info.domain == DOMAIN:
        cls = ERROR_TABLE.get(info.reason)
        metadata = dict(info.metadata)
    if cls is None or cls.code != code:
        cls = _BY_CODE.get(code, DescriptorError)
    if cls is DescriptorError:
        err = DescriptorError(status.message or code.name)
        err.code = code  # type: ignore[misc]
        return err
    return cls(status.message, metadata=metadata)


def from_rpc_error(err: grpc.RpcError) -> DescriptorError:
    """The typed exception for a failed call (sync or asyncio)."""
    from grpc_status import rpc_status

    status: status_pb2.Status | None = None
    try:
        status = rpc_status.from_call(err)
    except ValueError:
        status = None
    if status is None:
        code = err.code() if callable(getattr(err, "code", None)) else grpc.StatusCode.UNKNOWN
        details = err.details() if callable(getattr(err, "details", None)) else ""
        status = status_pb2.Status(code=_CODE_VALUES.get(code, 2), message=details or "")
    return from_status_proto(status)


def code_of(value: int) -> grpc.StatusCode:
    """The grpc.StatusCode for a numeric code."""
    return _CODES_BY_VALUE.get(value, grpc.StatusCode.UNKNOWN)
