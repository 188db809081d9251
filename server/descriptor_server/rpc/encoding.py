"""The hot path's response encoding: serialized answers, memoised per descriptor.

A Stat hit answers the same descriptor object over and over, so its serialized
``StatResponse`` is kept beside it and reused while the answer is that very descriptor
(or an equal one): an entry can never go stale, because it is used only for the
descriptor it encodes. A ``BatchStatResponse`` is the concatenation of its
length-delimited ``results`` fields (protobuf wire format: tag 1, varint length,
message), so a batch of hits is joined from memoised fields rather than built as a
message. Both memos are bounded and cleared when full.
"""

from __future__ import annotations

from collections.abc import Sequence

from descriptor_client._proto.descriptor.v1 import descriptor_pb2 as pb
from descriptor_client.descriptor import Descriptor
from descriptor_client.errors import DescriptorError, to_status_proto

#: Serialized responses kept per descriptor, in each memo.
MEMO_MAX = 16384

#: The tag of ``BatchStatResponse.results`` (field 1, length-delimited).
_RESULTS_TAG = b"\x0a"


def pb_descriptor(desc: Descriptor) -> pb.Descriptor:
    return pb.Descriptor(media_type=desc.media_type, digest=desc.digest, size=desc.size)


def length_delimited(tag: bytes, body: bytes) -> bytes:
    """``body`` as one length-delimited field: tag, varint length, bytes."""
    n = len(body)
    head = bytearray(tag)
    while n > 0x7F:
        head.append((n & 0x7F) | 0x80)
        n >>= 7
    head.append(n)
    return bytes(head) + body


def result_field(result: pb.BatchStatResult) -> bytes:
    """``result`` as field 1 of a BatchStatResponse."""
    return length_delimited(_RESULTS_TAG, result.SerializeToString())


class ResponseEncoder:
    """Serialized StatResponse and BatchStatResponse bytes, memoised per descriptor."""

    def __init__(self, memo_max: int = MEMO_MAX) -> None:
        self.memo_max = memo_max
        # digest -> (descriptor, its serialized StatResponse / BatchStatResponse field)
        self._stat_memo: dict[str, tuple[Descriptor, bytes]] = {}
        self._result_memo: dict[str, tuple[Descriptor, bytes]] = {}

    def stat_response(self, desc: Descriptor) -> bytes:
        """The serialized ``StatResponse`` answering ``desc``."""
        memo = self._stat_memo
        known = memo.get(desc.digest)
        if known is not None and (known[0] is desc or known[0] == desc):
            if known[0] is not desc:
                memo[desc.digest] = (desc, known[1])  # the next hit is an identity check
            return known[1]
        if len(memo) >= self.memo_max:
            memo.clear()
        wire = pb.StatResponse(descriptor=pb_descriptor(desc)).SerializeToString()
        memo[desc.digest] = (desc, wire)
        return wire

    def batch_response(self, digests: Sequence[str], results: Sequence[Descriptor | DescriptorError]) -> bytes:
        """The serialized ``BatchStatResponse``: one ``results`` field per digest, in order.

        A hit whose descriptor carries the requested digest reuses the field memoised
        for that descriptor; an alias hit or a failed item is encoded afresh.
        """
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
                if len(memo) >= self.memo_max:
                    memo.clear()
                wire = result_field(pb.BatchStatResult(digest=digest, descriptor=pb_descriptor(result)))
                memo[digest] = (result, wire)
                append(wire)
            elif isinstance(result, Descriptor):
                append(result_field(pb.BatchStatResult(digest=digest, descriptor=pb_descriptor(result))))
            else:
                append(result_field(pb.BatchStatResult(digest=digest, status=to_status_proto(result))))
        return b"".join(parts)


__all__ = ["MEMO_MAX", "ResponseEncoder", "length_delimited", "pb_descriptor", "result_field"]
