"""The hot path's encoding: memoised serialized responses that decode as the messages."""

from __future__ import annotations

from descriptor_client import BlobUnknownError, Descriptor, DigestInvalidLengthError
from descriptor_client._proto.descriptor.v1 import descriptor_pb2 as pb
from descriptor_client.errors import from_status_proto
from descriptor_server.rpc.encoding import ResponseEncoder, length_delimited
from helpers.support import OCT, digest_of

A = digest_of(b"a")
B = digest_of(b"b")


def test_stat_response_decodes_and_is_reused_for_the_same_descriptor() -> None:
    enc = ResponseEncoder()
    desc = Descriptor(OCT, A, 1)
    wire = enc.stat_response(desc)
    assert pb.StatResponse.FromString(wire).descriptor == pb.Descriptor(media_type=OCT, digest=A, size=1)
    assert enc.stat_response(desc) is wire
    assert enc.stat_response(Descriptor(OCT, A, 1)) is wire  # an equal descriptor: the same bytes


def test_stat_response_is_never_stale() -> None:
    enc = ResponseEncoder()
    enc.stat_response(Descriptor(OCT, A, 1))
    grown = enc.stat_response(Descriptor("application/json", A, 2))
    assert pb.StatResponse.FromString(grown).descriptor == pb.Descriptor(
        media_type="application/json", digest=A, size=2
    )


def test_batch_response_decodes_in_request_order() -> None:
    enc = ResponseEncoder()
    alias = "sha512:" + "c" * 128
    results = [Descriptor(OCT, A, 1), Descriptor(OCT, B, 2), BlobUnknownError.of(B), DigestInvalidLengthError("short")]
    wire = enc.batch_response([A, alias, B, "sha256:abc"], results)
    resp = pb.BatchStatResponse.FromString(wire)
    assert [r.digest for r in resp.results] == [A, alias, B, "sha256:abc"]
    assert resp.results[0].descriptor.size == 1
    assert resp.results[1].descriptor.digest == B  # an alias answers with the canonical digest
    assert from_status_proto(resp.results[2].status).reason == "BLOB_UNKNOWN"
    assert from_status_proto(resp.results[3].status).reason == "DIGEST_INVALID_LENGTH"
    assert enc.batch_response([A, alias, B, "sha256:abc"], results) == wire


def test_memos_are_bounded() -> None:
    enc = ResponseEncoder(memo_max=2)
    digests = [digest_of(bytes([i])) for i in range(10)]
    for d in digests:
        enc.stat_response(Descriptor(OCT, d, 1))
        enc.batch_response([d], [Descriptor(OCT, d, 1)])
    assert len(enc._stat_memo) <= 2
    assert len(enc._result_memo) <= 2


def test_length_delimited_varint_lengths() -> None:
    for size in (0, 1, 127, 128, 300, 16384, 2**21):
        body = b"x" * size
        field = length_delimited(b"\x0a", body)
        parsed = pb.BatchStatResponse.FromString(
            length_delimited(b"\x0a", pb.BatchStatResult(digest="d" * size).SerializeToString())
        )
        assert parsed.results[0].digest == "d" * size
        assert field.endswith(body)
