"""The one error table (docs/api.md, Errors), both ways, and through a real server."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from descriptor_client import (
    ERROR_TABLE,
    BlobUnknownError,
    CallCancelledError,
    DeadlineExceededError,
    DescriptorClient,
    DescriptorError,
    DigestInvalidFormatError,
    DigestInvalidLengthError,
    DigestUnsupportedError,
    InvalidArgumentError,
    RepositoryNameInvalidError,
    UnavailableError,
    UnsupportedError,
)
from descriptor_client._proto.descriptor.v1 import descriptor_pb2 as pb
from descriptor_client.errors import DOMAIN, error_info, from_status_proto, to_status_proto
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from helpers.support import A384, Layout, ServerProcess, base_config

#: The error table of docs/api.md, reason -> code, as a user reads it.
API_TABLE = {
    "BLOB_UNKNOWN": grpc.StatusCode.NOT_FOUND,
    "DIGEST_INVALID_FORMAT": grpc.StatusCode.INVALID_ARGUMENT,
    "DIGEST_INVALID_LENGTH": grpc.StatusCode.INVALID_ARGUMENT,
    "DIGEST_UNSUPPORTED": grpc.StatusCode.INVALID_ARGUMENT,
    "DESCRIPTOR_INVALID": grpc.StatusCode.INVALID_ARGUMENT,
    "REPOSITORY_NAME_INVALID": grpc.StatusCode.INVALID_ARGUMENT,
    "BATCH_TOO_LARGE": grpc.StatusCode.INVALID_ARGUMENT,
    "UNSUPPORTED": grpc.StatusCode.UNIMPLEMENTED,
    "BACKEND_UNAVAILABLE": grpc.StatusCode.UNAVAILABLE,
    "SERVER_DRAINING": grpc.StatusCode.UNAVAILABLE,
    "REQUEST_INVALID": grpc.StatusCode.INVALID_ARGUMENT,
    "UNAUTHENTICATED": grpc.StatusCode.UNAUTHENTICATED,
    "PERMISSION_DENIED": grpc.StatusCode.PERMISSION_DENIED,
}


def test_table_covers_the_contract() -> None:
    for reason, code in API_TABLE.items():
        assert reason in ERROR_TABLE, reason
        assert ERROR_TABLE[reason].code == code, reason
        assert ERROR_TABLE[reason].reason == reason


@pytest.mark.parametrize("reason", sorted(ERROR_TABLE))
def test_round_trip(reason: str) -> None:
    cls = ERROR_TABLE[reason]
    err = cls(f"something about {reason}", metadata={"digest": "sha256:x"})
    status = to_status_proto(err)
    assert status.code == cls.code.value[0]
    info = error_info(status)
    assert info is not None
    assert (info.domain, info.reason) == (DOMAIN, reason)
    # Through the wire encoding too.
    back = from_status_proto(status_pb2.Status.FromString(status.SerializeToString()))
    assert type(back) is cls
    assert back.code == cls.code
    assert back.message == f"something about {reason}"
    assert back.metadata == {"digest": "sha256:x"}


def test_status_without_error_info_maps_by_code() -> None:
    assert type(from_status_proto(status_pb2.Status(code=5, message="gone"))) is BlobUnknownError
    assert type(from_status_proto(status_pb2.Status(code=3, message="bad"))) is InvalidArgumentError
    assert isinstance(from_status_proto(status_pb2.Status(code=14, message="down")), UnavailableError)


def test_reason_from_another_domain_or_mismatched_code_is_not_trusted() -> None:
    info = error_details_pb2.ErrorInfo(reason="BLOB_UNKNOWN", domain="other.example")
    status = status_pb2.Status(code=5, message="m")
    status.details.add().Pack(info)
    err = from_status_proto(status)
    assert type(err) is BlobUnknownError  # by code
    # Our domain, but a code that contradicts the reason: the code wins.
    info = error_details_pb2.ErrorInfo(reason="BLOB_UNKNOWN", domain=DOMAIN)
    status = status_pb2.Status(code=3, message="m")
    status.details.add().Pack(info)
    assert type(from_status_proto(status)) is InvalidArgumentError


def test_deadline_exceeded_is_an_unavailable_error_with_its_own_code() -> None:
    err = from_status_proto(status_pb2.Status(code=4, message="Deadline Exceeded"))
    assert type(err) is DeadlineExceededError
    assert isinstance(err, UnavailableError)
    assert err.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "DEADLINE_EXCEEDED" not in ERROR_TABLE  # not a reason any server sends


def test_cancelled_is_an_unavailable_error_with_its_own_code() -> None:
    """grpcio cancels calls a stopping server had not dispatched: retryable, documented."""
    err = from_status_proto(status_pb2.Status(code=1, message="Cancelled"))
    assert type(err) is CallCancelledError
    assert isinstance(err, UnavailableError)
    assert err.code == grpc.StatusCode.CANCELLED


def test_unknown_code_keeps_its_code() -> None:
    err = from_status_proto(status_pb2.Status(code=13, message="boom"))
    assert type(err) is DescriptorError
    assert err.code == grpc.StatusCode.INTERNAL
    assert err.message == "boom"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("errors")
    layout = Layout(tmp / "registry")
    layout.root.mkdir()
    proc = ServerProcess(base_config(layout.root, delete=False), tmp).start()
    try:
        yield proc
    finally:
        proc.stop()


CASES = [
    (A384, "", BlobUnknownError),
    ("sha256:" + "A" * 64, "", DigestInvalidFormatError),
    ("sha384:abc", "", DigestInvalidLengthError),
    ("md5:abc", "", DigestUnsupportedError),
    (A384, "Foo/Bar", RepositoryNameInvalidError),
]


@pytest.mark.parametrize(("digest", "repository", "error"), CASES)
def test_real_server_status_carries_error_info_and_client_raises_the_class(
    server: ServerProcess, digest: str, repository: str, error: type[DescriptorError]
) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stat = channel.unary_unary(
            "/descriptor.v1.BlobDescriptorService/Stat",
            request_serializer=pb.StatRequest.SerializeToString,
            response_deserializer=pb.StatResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as raw:
            stat(pb.StatRequest(digest=digest, repository=repository), timeout=10)
        assert raw.value.code() == error.code
        status = rpc_status.from_call(raw.value)
        assert status is not None
        info = error_info(status)
        assert info is not None
        assert (info.domain, info.reason) == (DOMAIN, error.reason)
    with DescriptorClient(server.target) as client, pytest.raises(DescriptorError) as typed:
        client.stat(digest, repository)
    assert type(typed.value) is error
    assert typed.value.reason == error.reason


def test_real_server_clear_with_deletion_disabled_is_unsupported(server: ServerProcess) -> None:
    with DescriptorClient(server.target) as client, pytest.raises(UnsupportedError) as info:
        client.clear(A384)
    assert info.value.code == grpc.StatusCode.UNIMPLEMENTED


def test_descriptor_error_str() -> None:
    assert str(BlobUnknownError("blob x unknown")) == "BLOB_UNKNOWN: blob x unknown"
    assert str(BlobUnknownError()) == "BLOB_UNKNOWN"
