"""Fuzzing: property tests over the validators and through the wire, and raw hostile bodies.

The server must never crash, never hang, and answer every call either OK or with a
contract status carrying a ``google.rpc.ErrorInfo`` whose reason is in the one error
table (a body that does not decode: INVALID_ARGUMENT / ``REQUEST_INVALID``).

Reproducible for CI: hypothesis runs derandomized with a fixed number of examples,
and the raw-bytes mutations come from a seeded generator.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from descriptor_client import (
    ERROR_TABLE,
    Descriptor,
    DescriptorClient,
    DescriptorError,
    DescriptorInvalidError,
    DigestInvalidFormatError,
    DigestInvalidLengthError,
    DigestUnsupportedError,
    RepositoryNameInvalidError,
    validate_descriptor,
    validate_digest,
    validate_media_type,
    validate_repository,
)
from descriptor_client._proto.descriptor.v1 import descriptor_pb2 as pb
from descriptor_client.digest import ALGORITHMS
from descriptor_client.errors import DOMAIN, code_of, error_info
from descriptor_client.rpcs import RPCS
from descriptor_server.backends import layout
from grpc._cython import cygrpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from helpers.support import Layout, ServerProcess, base_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SERVICE = "descriptor.v1.BlobDescriptorService"
MAX_BATCH = 40

#: Fixed budgets: the whole module stays well under a minute on a small machine.
VALIDATORS = settings(max_examples=400, deadline=None, derandomize=True, database=None)
WIRE = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

DIGEST_ERRORS = (DigestInvalidFormatError, DigestInvalidLengthError, DigestUnsupportedError)
DIGEST_REGEXP = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
NAME = re.compile(rf"{COMPONENT}(?:/{COMPONENT})*")

# -- strategies -----------------------------------------------------------------------------

HEX = "0123456789abcdef"


@st.composite
def valid_digests(draw: st.DrawFn) -> str:
    algorithm = draw(st.sampled_from(sorted(ALGORITHMS)))
    return f"{algorithm}:" + draw(st.text(HEX, min_size=ALGORITHMS[algorithm], max_size=ALGORITHMS[algorithm]))


# Near misses: the pieces a digest is made of, in any order and count.
digest_pieces = st.lists(
    st.sampled_from(
        ["sha256", "sha384", "sha512", "md5", ":", "a", "F", "0", "/", "..", "+", "-", "_", "=", "\x00", "é"]
    )
    | st.text(HEX, min_size=1, max_size=130),
    max_size=6,
).map("".join)

any_digests = valid_digests() | digest_pieces | st.text(max_size=140)

ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"


@st.composite
def components(draw: st.DrawFn) -> str:
    """One path component of the OCI name grammar: alphanumeric runs joined by separators."""
    runs = draw(st.lists(st.text(ALNUM, min_size=1, max_size=8), min_size=1, max_size=4))
    out = runs[0]
    for run in runs[1:]:
        out += draw(st.sampled_from([".", "_", "__", "-", "--"])) + run
    return out


valid_repositories = st.lists(components(), min_size=1, max_size=5).map("/".join).filter(lambda s: len(s) <= 255)
repository_pieces = st.lists(
    st.sampled_from(["foo", "bar", "/", "//", ".", "..", "_", "__", "-", ":5000", "@sha256", "Foo", " ", "\x00"]),
    max_size=8,
).map("".join)
any_repositories = st.just("") | valid_repositories | repository_pieces | st.text(max_size=300)

media_types = st.sampled_from(
    [
        "application/octet-stream",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.docker.distribution.manifest.v2+json",
        'text/plain; charset="utf-8"',
        "application/json; charset=utf-8",
    ]
)
any_media_types = (
    media_types
    | st.from_regex(re.compile(r"\A[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,40}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,40}\Z"))
    | st.text(max_size=300)
)
sizes = st.integers(min_value=-(2**63), max_value=2**63 - 1)


@st.composite
def descriptors(draw: st.DrawFn) -> tuple[str, Descriptor]:
    """A key digest and a descriptor for it: valid, aliased, or broken in one or more ways."""
    key = draw(valid_digests() | any_digests)
    digest = draw(st.just(key) | valid_digests() | any_digests)
    media = draw(media_types | any_media_types)
    size = draw(st.integers(0, 2**40) | sizes)
    return key, Descriptor(media, digest, size)


def reason_of(fn: Any, *args: Any) -> str | None:
    return attempt(fn, *args)[1]


def attempt(fn: Any, *args: Any) -> tuple[Any, str | None]:
    """(result, None) or (None, the contract reason of the error raised)."""
    try:
        return fn(*args), None
    except DescriptorError as err:
        return None, err.reason


# -- validators ---------------------------------------------------------------------------------


@VALIDATORS
@given(valid_digests())
def test_valid_digests_are_accepted(digest: str) -> None:
    assert validate_digest(digest) == digest


@VALIDATORS
@given(any_digests)
def test_digest_validation_follows_the_contract_order(digest: str) -> None:
    """Exactly the checks and order of docs/api.md, Errors, and only the three digest errors."""
    algorithm, sep, encoded = digest.partition(":")
    if not sep or not algorithm or not encoded:
        want: type[DescriptorError] | None = DigestInvalidFormatError
    elif algorithm not in ALGORITHMS:
        want = DigestUnsupportedError if DIGEST_REGEXP.fullmatch(digest) else DigestInvalidFormatError
    elif len(encoded) != ALGORITHMS[algorithm]:
        want = DigestInvalidLengthError
    elif re.fullmatch(r"[a-f0-9]+", encoded) is None:
        want = DigestInvalidFormatError
    else:
        want = None
    if want is None:
        assert validate_digest(digest) == digest
    else:
        with pytest.raises(want):
            validate_digest(digest)


@VALIDATORS
@given(valid_digests(), st.integers(0, 200), st.sampled_from(["upper", "cut", "grow", "path"]))
def test_mutated_digests_are_refused(digest: str, at: int, how: str) -> None:
    algorithm, _, encoded = digest.partition(":")
    i = at % len(encoded)
    if how == "upper":
        mutated = f"{algorithm}:{encoded[:i]}{'A'}{encoded[i + 1 :]}"
        want: type[DescriptorError] = DigestInvalidFormatError
    elif how == "cut":
        mutated, want = f"{algorithm}:{encoded[:i]}", DigestInvalidLengthError if i else DigestInvalidFormatError
    elif how == "grow":
        mutated, want = f"{digest}{encoded[i]}", DigestInvalidLengthError
    else:
        mutated, want = f"{algorithm}:{encoded[: i - 1 if i else 0]}/..{encoded[i + 2 :]}", DigestInvalidFormatError
        if len(mutated.partition(":")[2]) != len(encoded):
            want = DigestInvalidLengthError
    with pytest.raises(want):
        validate_digest(mutated)


@VALIDATORS
@given(valid_repositories)
def test_valid_repositories_are_accepted(name: str) -> None:
    assert validate_repository(name) == name


@VALIDATORS
@given(any_repositories)
def test_accepted_repositories_are_confined_names(name: str) -> None:
    """Whatever is accepted is a grammar name: no ``..``, no absolute path, no host or tag."""
    if reason_of(validate_repository, name) is None:
        assert name == "" or (NAME.fullmatch(name) and len(name) <= 255)
        parts = name.split("/")
        assert ".." not in parts
        assert "." not in parts
        assert "" not in parts or name == ""
        if name:
            root = "/srv/registry"
            link = os.path.normpath(os.path.join(root, *layout.link(name, "sha256:" + "a" * 64)))
            assert link.startswith(root + "/docker/registry/v2/repositories/")
    else:
        with pytest.raises(RepositoryNameInvalidError):
            validate_repository(name)


@VALIDATORS
@given(any_media_types)
def test_accepted_media_types_are_bounded_type_subtype(media_type: str) -> None:
    if reason_of(validate_media_type, media_type) is None:
        assert 0 < len(media_type) <= 255
        kind, slash, rest = media_type.partition("/")
        assert kind
        assert slash
        assert rest
        assert not any(ord(c) < 32 or ord(c) == 127 for c in media_type)
    else:
        with pytest.raises(DescriptorInvalidError):
            validate_media_type(media_type)


@VALIDATORS
@given(descriptors())
def test_descriptor_validation(pair: tuple[str, Descriptor]) -> None:
    key, desc = pair
    if reason_of(validate_digest, key) is not None:
        return  # the key is checked first, by the caller
    reason = reason_of(validate_descriptor, key, desc)
    ok = (
        reason_of(validate_digest, desc.digest) is None
        and (desc.digest == key or desc.digest.partition(":")[0] != key.partition(":")[0])
        and desc.size >= 0
        and reason_of(validate_media_type, desc.media_type) is None
    )
    assert reason == (None if ok else "DESCRIPTOR_INVALID")


# -- through the wire -------------------------------------------------------------------------


class Fuzzed:
    def __init__(self, proc: ServerProcess, layout: Layout, blobs: list[str]) -> None:
        self.proc = proc
        self.layout = layout
        self.blobs = blobs
        self.client = DescriptorClient(proc.target, timeout=10)
        self.channel = grpc.insecure_channel(proc.target)


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    workdir = tmp_path_factory.mktemp("fuzz")
    layout = Layout(workdir / "registry")
    layout.root.mkdir()
    blobs = [layout.push("library/app", f"layer {i}".encode()) for i in range(3)]
    blobs.append(layout.put_blob(b"global only"))
    # A short grpc.requesttimeout: the call shapes without a request end quickly.
    proc = ServerProcess(base_config(layout.root, maxbatch=MAX_BATCH, requesttimeout="1s"), workdir).start()
    target = Fuzzed(proc, layout, blobs)
    try:
        yield target
    finally:
        target.client.close()
        target.channel.close()
        proc.stop()
        assert "unexpected error" not in proc.output, proc.output


def expected_scope_reason(digest: str, repository: str) -> str | None:
    """The contract's validation order: key digest, then repository."""
    return reason_of(validate_digest, digest) or reason_of(validate_repository, repository)


def known_or(strategy: st.SearchStrategy[str], fuzzed_blobs: list[str]) -> st.SearchStrategy[str]:
    return st.sampled_from(fuzzed_blobs) | strategy


@WIRE
@given(data=st.data())
def test_stat_answers_per_contract(fuzzed: Fuzzed, data: st.DataObject) -> None:
    digest = data.draw(known_or(any_digests, fuzzed.blobs))
    repository = data.draw(st.sampled_from(["", "library/app"]) | any_repositories)
    want = expected_scope_reason(digest, repository)
    desc, reason = attempt(fuzzed.client.stat, digest, repository)
    if reason is not None:
        assert reason == (want or "BLOB_UNKNOWN"), (digest, repository)
        assert not (digest in fuzzed.blobs[:3] and repository in ("", "library/app")), "a pushed blob went missing"
    else:
        assert want is None
        assert desc.digest == digest


@WIRE
@given(pair=descriptors(), repository=st.sampled_from(["", "fuzz/set"]) | any_repositories)
def test_set_descriptor_answers_per_contract(fuzzed: Fuzzed, pair: tuple[str, Descriptor], repository: str) -> None:
    key, desc = pair
    want = expected_scope_reason(key, repository) or reason_of(validate_descriptor, key, desc)
    _, reason = attempt(fuzzed.client.set_descriptor, key, desc, repository)
    assert reason == want, (key, desc, repository)
    if reason is not None:
        return
    if repository:
        # Repository scope: last write wins, so the descriptor reads back as written.
        assert fuzzed.client.stat(key, repository) == desc


@WIRE
@given(data=st.data())
def test_batch_stat_answers_per_contract(fuzzed: Fuzzed, data: st.DataObject) -> None:
    digests = data.draw(st.lists(known_or(any_digests, fuzzed.blobs), max_size=MAX_BATCH + 5))
    repository = data.draw(st.sampled_from(["", "library/app"]) | any_repositories)
    results, reason = attempt(fuzzed.client.batch_stat, digests, repository)
    want = reason_of(validate_repository, repository) or ("BATCH_TOO_LARGE" if len(digests) > MAX_BATCH else None)
    assert reason == want, (repository, len(digests))
    if reason is not None:
        return
    assert len(results) == len(digests)
    for digest, result in zip(digests, results, strict=True):
        if isinstance(result, Descriptor):
            assert result.digest == digest
            assert reason_of(validate_digest, digest) is None
        else:
            assert result.reason == (reason_of(validate_digest, digest) or "BLOB_UNKNOWN"), (digest, result)


@WIRE
@given(digest=any_digests, repository=st.sampled_from(["", "fuzz/clear"]) | any_repositories)
def test_clear_answers_per_contract(fuzzed: Fuzzed, digest: str, repository: str) -> None:
    want = expected_scope_reason(digest, repository)
    _, reason = attempt(fuzzed.client.clear, digest, repository)
    if reason is not None:
        assert reason == (want or "BLOB_UNKNOWN"), (digest, repository)
    else:
        assert want is None


# -- raw bytes -----------------------------------------------------------------------------------

METHODS = RPCS  # every RPC of the one table, as the client and server have them

#: Hand-made hostile bodies: huge declared lengths, bad UTF-8, deep groups, bad tags.
HOSTILE = [
    b"",
    b"\x00",
    b"\xff" * 16,
    b"\x0a\xff\xff\xff\xff\x0f",  # field 1, length 4 GiB
    b"\x0a\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",  # over-long varint
    b"\x0a\x02\xff\xfe",  # invalid UTF-8 in a string field
    b"\x12\x02\xc3\x28",
    b"\x0b" * 5000,  # 5000 nested start-group tags
    b"\x1b" * 5000 + b"\x1c" * 5000,
    b"\x0c",  # end-group without a start
    b"\x07",  # wire type 7 does not exist
    b"\x08\x01",  # a varint where a string is expected
    b"\x12\x03\x18\xff\xff",  # descriptor with a truncated size
    b"\x12\x0b\x18\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # size -1 as a varint
    b"\x0a\x00" * 2000,  # 2000 empty digests (BatchStat: too many)
    b"\xfa\xff\xff\xff\x0f\x00",  # the highest field number
]


def valid_bodies(blobs: list[str]) -> dict[str, list[bytes]]:
    digest = blobs[0]
    alias = "sha384:" + "ab" * 48
    return {
        "Stat": [
            pb.StatRequest(digest=digest).SerializeToString(),
            pb.StatRequest(digest=digest, repository="library/app").SerializeToString(),
        ],
        "SetDescriptor": [
            pb.SetDescriptorRequest(
                digest=alias,
                descriptor=pb.Descriptor(media_type="application/vnd.oci.image.layer.v1.tar", digest=digest, size=7),
                repository="library/app",
            ).SerializeToString()
        ],
        "Clear": [pb.ClearRequest(digest=alias, repository="library/app").SerializeToString()],
        "BatchStat": [
            pb.BatchStatRequest(digests=[*blobs, "sha256:bad", alias], repository="").SerializeToString(),
            pb.BatchStatRequest(digests=blobs[:2], repository="library/app").SerializeToString(),
        ],
        "GetMetrics": [pb.GetMetricsRequest().SerializeToString(), b"\x0a\x03abc"],
        "Revalidate": [
            pb.RevalidateRequest(digest=digest, repository="library/app").SerializeToString(),
            pb.RevalidateRequest(digest=alias).SerializeToString(),
        ],
    }


def mutations(body: bytes, rng: random.Random, count: int) -> Iterator[bytes]:
    """Bit flips, byte substitutions, truncations and splices of a valid body."""
    for prefix in range(len(body)):
        yield body[:prefix]
    for _ in range(count):
        data = bytearray(body or b"\x00")
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(data))
            kind = rng.random()
            if kind < 0.5:
                data[i] ^= 1 << rng.randrange(8)
            elif kind < 0.8:
                data[i] = rng.choice([0x00, 0x7F, 0x80, 0xFF, 0x0A, 0x12, 0x1A, rng.randrange(256)])
            else:
                data[i:i] = rng.randbytes(rng.randint(1, 8))
        yield bytes(data)


def assert_contract_answer(method: str, body: bytes, call: Any) -> None:
    """OK (and a response that decodes), or a status whose ErrorInfo reason is in the table."""
    failure: grpc.RpcError | None = None
    try:
        response = call(body, timeout=10)
    except grpc.RpcError as err:
        failure = err
    if failure is None:
        METHODS[method].response.FromString(response)
        return
    status = rpc_status.from_call(failure)
    assert status is not None, (method, body, failure.code(), failure.details())
    info = error_info(status)
    assert info is not None, (method, body, failure.code(), failure.details())
    assert info.domain == DOMAIN
    assert info.reason in ERROR_TABLE, (method, body, info.reason)
    assert ERROR_TABLE[info.reason].code == failure.code() == code_of(status.code), (method, body, info.reason)


@pytest.mark.parametrize("method", list(METHODS))
def test_raw_bodies_get_contract_answers(fuzzed: Fuzzed, method: str) -> None:
    call = fuzzed.channel.unary_unary(f"/{SERVICE}/{method}")
    rng = random.Random(f"descriptor-fuzz-{method}")
    bodies = list(HOSTILE)
    for body in valid_bodies(fuzzed.blobs)[method]:
        bodies.append(body)
        bodies.extend(mutations(body, rng, 150))
    bodies.extend(rng.randbytes(rng.randint(1, 300)) for _ in range(150))
    for body in bodies:
        assert_contract_answer(method, body, call)


@pytest.mark.parametrize("method", list(METHODS))
def test_undecodable_body_is_request_invalid(fuzzed: Fuzzed, method: str) -> None:
    call = fuzzed.channel.unary_unary(f"/{SERVICE}/{method}")
    with pytest.raises(grpc.RpcError) as info:
        call(b"\x0a\xff\xff\xff\xff\x0f", timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(info.value)
    assert status is not None
    detail = error_info(status)
    assert detail is not None
    assert detail.reason == "REQUEST_INVALID"


@WIRE
@given(method=st.sampled_from(sorted(METHODS)), body=st.binary(max_size=512))
def test_arbitrary_bodies_get_contract_answers(fuzzed: Fuzzed, method: str, body: bytes) -> None:
    assert_contract_answer(method, body, fuzzed.channel.unary_unary(f"/{SERVICE}/{method}"))


# -- hostile call shapes: no request, no end, two requests, odd metadata ---------------------------


async def _shape_call(target: str, method: str, requests: list[bytes] | None, metadata: Any) -> Any:
    """One call sending ``requests`` then ending its side (None: headers only, never ending)."""
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.stream_unary(f"/{SERVICE}/{method}")(metadata=metadata, timeout=20)
        if requests is not None:
            # The server may answer (and end the call) before every message is written.
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError, cygrpc.ExecuteBatchError):
                for body in requests:
                    await call.write(body)
                await call.done_writing()
        try:
            return await call
        except grpc.aio.AioRpcError as err:
            return err


def assert_shape_answer(
    method: str, requests: list[bytes] | None, fuzzed: Fuzzed, metadata: Any = None
) -> grpc.StatusCode:
    """A call of ``method`` sending ``requests`` ends, with OK or a contract status, in time."""
    start = time.monotonic()
    answer = asyncio.run(_shape_call(fuzzed.proc.target, method, requests, metadata))
    assert time.monotonic() - start < 15, (method, "the call was held")
    if not isinstance(answer, grpc.aio.AioRpcError):
        METHODS[method].response.FromString(answer)
        return grpc.StatusCode.OK
    if answer.code() == grpc.StatusCode.CANCELLED:  # the server ended it while we could still write
        return answer.code()
    details = answer.trailing_metadata() or ()
    raw = next((v for k, v in details if k == "grpc-status-details-bin"), None)
    assert raw is not None, (method, answer.code(), answer.details())
    from google.rpc import status_pb2

    info = error_info(status_pb2.Status.FromString(raw))
    assert info is not None, (method, answer.code(), answer.details())
    assert info.reason in ERROR_TABLE, (method, answer.code(), answer.details())
    assert ERROR_TABLE[info.reason].code == answer.code()
    return answer.code()


@pytest.mark.parametrize("method", list(METHODS))
def test_calls_without_a_request_end_with_contract_answers(fuzzed: Fuzzed, method: str) -> None:
    """Headers and nothing more; headers and an end with no message; two messages."""
    assert assert_shape_answer(method, None, fuzzed) in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.CANCELLED,
    )
    assert assert_shape_answer(method, [], fuzzed) == grpc.StatusCode.INVALID_ARGUMENT
    body = valid_bodies(fuzzed.blobs)[method][0]
    assert_shape_answer(method, [body, body], fuzzed)


@WIRE
@given(
    method=st.sampled_from(sorted(METHODS)),
    metadata=st.lists(
        st.tuples(
            st.sampled_from(["authorization", "x-hostile", "grpc-timeout-ish", "content-type-x"]),
            st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=64),
        ),
        max_size=4,
    ),
    send=st.booleans(),
)
def test_hostile_metadata_and_missing_requests(
    fuzzed: Fuzzed, method: str, metadata: list[tuple[str, str]], send: bool
) -> None:
    body = valid_bodies(fuzzed.blobs)[method][0]
    assert_shape_answer(method, [body] if send else [], fuzzed, metadata=tuple(metadata))


# -- registry bearer tokens (auth.token) -----------------------------------------------------------

#: Metadata limit of the token-fuzzing server: large enough that huge tokens reach the
#: authorizer (its own bound, 256 KiB, refuses them unparsed); beyond it gRPC core
#: answers RESOURCE_EXHAUSTED before any handler runs.
TOKEN_METADATA = 512 * 1024
TOKEN_ANSWERS = {grpc.StatusCode.OK, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}


class TokenFuzzed:
    def __init__(self, proc: ServerProcess, issuer: Any, blob: str) -> None:
        self.proc, self.issuer, self.blob = proc, issuer, blob
        self.channel = grpc.insecure_channel(proc.target, options=[("grpc.max_metadata_size", 2 * TOKEN_METADATA)])
        self.stat = self.channel.unary_unary(f"/{SERVICE}/Stat")

    def answer(self, token: str, repository: str = "library/app") -> tuple[grpc.StatusCode, str | None]:
        """The code and ErrorInfo reason of a Stat carrying ``token``."""
        body = pb.StatRequest(digest=self.blob, repository=repository).SerializeToString()
        try:
            self.stat(body, timeout=10, metadata=[("authorization", f"Bearer {token}")])
        except grpc.RpcError as err:
            status = rpc_status.from_call(err)
            info = error_info(status) if status is not None else None
            return err.code(), info.reason if info is not None else None
        return grpc.StatusCode.OK, None


@pytest.fixture(scope="module")
def token_fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenFuzzed]:
    from helpers.tokens import TokenIssuer

    workdir = tmp_path_factory.mktemp("fuzz-tokens")
    layout = Layout(workdir / "registry")
    layout.root.mkdir()
    blob = layout.push("library/app", b"behind a registry token")
    issuer = TokenIssuer(workdir / "issuer", algorithm="ES256", intermediate=True)
    config = base_config(layout.root, maxmetadatasize=TOKEN_METADATA)
    config["auth"] = {"token": {**issuer.auth_config(), "jwks": str(issuer.jwks_path)}}
    proc = ServerProcess(config, workdir).start()
    target = TokenFuzzed(proc, issuer, blob)
    try:
        yield target
    finally:
        target.channel.close()
        proc.stop()
        assert "unexpected error" not in proc.output, proc.output


def test_hostile_tokens_are_refused(token_fuzzed: TokenFuzzed) -> None:
    """Malformed, unsigned, wrongly signed, huge, skewed: each UNAUTHENTICATED or PERMISSION_DENIED."""
    from helpers.tokens import b64url, new_key

    issuer = token_fuzzed.issuer
    pull = ["repository:library/app:pull"]
    now = int(__import__("time").time())
    claims = b64url(json.dumps(issuer.claims(["repository:library/app:*"])).encode())
    unauthenticated = [
        "",
        ".",
        "..",
        "a.b.c",
        "e30.e30.e30",
        "e30." + claims + ".c2ln",  # no alg
        b64url(b'{"alg":"none"}') + "." + claims + ".",
        b64url(b'{"alg":"none"}') + "." + claims + ".c2ln",
        b64url(b'{"alg":"HS256","kid":"' + issuer.kid.encode() + b'"}') + "." + claims + ".c2ln",
        b64url(b'{"alg":"ES256","x5c":"' + b"A" * 5000 + b'"}') + "." + claims + ".c2ln",
        b64url(b'{"alg":"ES256","x5c":[' + b'"AAAA",' * 2000 + b'"AAAA"]}') + "." + claims + ".c2ln",
        b64url(b"[" * 10000 + b"]" * 10000) + "." + claims + ".c2ln",  # nesting deeper than JSON parsers like
        issuer.mint(pull, key=new_key("ES256")),  # wrong key
        issuer.mint(pull, algorithm="ES384", key=new_key("ES384")),
        issuer.mint(pull, exp=now - 3600),  # clock skew beyond the leeway, both ways
        issuer.mint(pull, nbf=now + 3600),
        issuer.mint(pull, exp=2**70),
        issuer.mint(pull, exp=-(2**70)),
        issuer.mint(pull, exp="tomorrow"),
        issuer.mint(pull, aud=[1, 2]),
        "A" * 300_000 + ".e30.c2ln",  # over the authorizer's 256 KiB bound: refused unparsed
    ]
    for token in unauthenticated:
        code, reason = token_fuzzed.answer(token)
        assert code == grpc.StatusCode.UNAUTHENTICATED, (token[:80], code)
        assert reason == "UNAUTHENTICATED"
    many = issuer.mint([f"repository:team/r{i}:pull,push,delete" for i in range(2500)])
    assert token_fuzzed.answer(many) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
    assert token_fuzzed.answer(many, "team/r2499")[0] != grpc.StatusCode.PERMISSION_DENIED  # granted: BLOB_UNKNOWN
    code, _ = token_fuzzed.answer("A" * (TOKEN_METADATA + 1024))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED  # grpc.maxmetadatasize, before any handler


@WIRE
@given(data=st.data())
def test_mutated_tokens_never_pass_unchanged_checks(token_fuzzed: TokenFuzzed, data: st.DataObject) -> None:
    """Bit flips and cuts of a valid token: refused, unless the bytes it decodes to are the same."""
    from descriptor_server.security.jose import JoseError, b64url_decode

    token = token_fuzzed.issuer.mint(["repository:library/app:pull"])
    chars = list(token)
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(chars) - 1))
        chars[i] = data.draw(st.sampled_from("AZaz09-_.=+/ ~"))
    cut = data.draw(st.integers(0, len(chars)))
    mutated = "".join(chars[:cut]) if data.draw(st.booleans()) else "".join(chars)
    code, _ = token_fuzzed.answer(mutated)
    assert code in TOKEN_ANSWERS, (mutated, code)

    def decoded(t: str) -> list[bytes] | None:
        try:
            return [b64url_decode(p) for p in t.split(".")]
        except JoseError:
            return None

    if code != grpc.StatusCode.UNAUTHENTICATED:
        assert decoded(mutated) == decoded(token), mutated


@WIRE
@given(
    shape=st.fixed_dictionaries(
        {
            "exp": st.sampled_from([-100000, -61, -30, 300, 10**12, 2**63, None]),
            "nbf": st.sampled_from([None, -100, 30, 90, 10**6]),
            "aud": st.sampled_from(["test-registry", ["x", "test-registry"], "other", None, 5]),
            "iss": st.sampled_from(["test-token-issuer", "evil", None]),
            "access": st.sampled_from(
                [
                    [{"type": "repository", "name": "library/app", "actions": ["pull"]}],
                    [{"type": "repository", "name": "library/app", "actions": ["*"]}],
                    [{"type": "repository", "name": "library/other", "actions": ["pull"]}],
                    [{"type": "registry", "name": "library/app", "actions": ["pull"]}],
                    [{"type": "repository", "name": "library/app", "actions": "pull"}],
                    [None, {"type": "repository", "name": "library/app"}],
                    None,
                    "all",
                ]
            ),
        }
    )
)
def test_signed_claims_follow_distribution(token_fuzzed: TokenFuzzed, shape: dict[str, Any]) -> None:
    """Validly signed tokens with every shape of claim: the answer is the one distribution's rules give."""
    exp, nbf, aud, iss, access = (shape[k] for k in ("exp", "nbf", "aud", "iss", "access"))
    now = int(__import__("time").time())
    claims: dict[str, Any] = {"aud": aud, "iss": iss, "access": access}
    claims["exp"] = None if exp is None else (exp if abs(exp) >= 10**12 else now + exp)
    claims["nbf"] = None if nbf is None else now + nbf
    token = token_fuzzed.issuer.mint([], **claims)
    code, _ = token_fuzzed.answer(token)
    well_formed = isinstance(access, list | type(None)) and access != [
        {"type": "repository", "name": "library/app", "actions": "pull"}
    ]
    exp_ok = claims["exp"] is not None and claims["exp"] < 2**63 and now <= claims["exp"] + 60
    valid = (
        well_formed
        and iss == "test-token-issuer"
        and aud in ("test-registry", ["x", "test-registry"])
        and exp_ok
        and (claims["nbf"] is None or claims["nbf"] - 60 <= now)
    )
    granted = valid and any(
        isinstance(e, dict) and e.get("type") == "repository" and e.get("name") == "library/app"
        and set(e.get("actions") or []) & {"pull", "*"}
        for e in access or []
    )  # fmt: skip
    if not valid:
        assert code == grpc.StatusCode.UNAUTHENTICATED, claims
    elif granted:
        assert code == grpc.StatusCode.OK, claims
    else:
        assert code == grpc.StatusCode.PERMISSION_DENIED, claims


def test_zz_token_server_survived(token_fuzzed: TokenFuzzed) -> None:
    assert token_fuzzed.proc.proc is not None
    assert token_fuzzed.proc.proc.poll() is None
    token = token_fuzzed.issuer.mint(["repository:library/app:pull"])
    assert token_fuzzed.answer(token) == (grpc.StatusCode.OK, None)


def test_zz_server_survived(fuzzed: Fuzzed) -> None:
    """Runs last in this module: after everything above, the process is alive and serving."""
    assert fuzzed.proc.proc is not None
    assert fuzzed.proc.proc.poll() is None
    stub = health_pb2_grpc.HealthStub(fuzzed.channel)
    assert stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
    assert fuzzed.client.stat(fuzzed.blobs[0], "library/app").digest == fuzzed.blobs[0]
    assert fuzzed.client.metrics().requests > 0
