"""Digest and repository-name validation: every example of docs/api.md, Errors."""

from __future__ import annotations

import pytest
from descriptor_client import (
    DigestInvalidFormatError,
    DigestInvalidLengthError,
    DigestUnsupportedError,
    RepositoryNameInvalidError,
    validate_digest,
    validate_repository,
)
from descriptor_client.digest import MAX_REPOSITORY_LENGTH, algorithm_of, hex_of, is_valid_digest
from descriptor_client.errors import DescriptorError

HEX64 = "0123456789abcdef" * 4


@pytest.mark.parametrize(
    "digest",
    ["sha256:" + HEX64, "sha384:" + "a" * 96, "sha512:" + "f" * 128],
)
def test_supported_digests_are_valid(digest: str) -> None:
    assert validate_digest(digest) == digest
    assert is_valid_digest(digest)


@pytest.mark.parametrize(
    ("digest", "error"),
    [
        # The contract's examples.
        ("", DigestInvalidFormatError),
        ("sha256", DigestInvalidFormatError),
        ("sha256:", DigestInvalidFormatError),
        ("SHA256:" + HEX64, DigestInvalidFormatError),
        ("sha256:" + HEX64.upper(), DigestInvalidFormatError),
        ("md5:abc!", DigestInvalidFormatError),
        ("sha384:abc", DigestInvalidLengthError),
        ("md5:abc", DigestUnsupportedError),
        # More of the same rules.
        (":" + HEX64, DigestInvalidFormatError),  # empty algorithm
        ("sha256:" + "g" * 64, DigestInvalidFormatError),  # right length, not hex
        ("sha256:" + HEX64[:63], DigestInvalidLengthError),
        ("sha256:" + HEX64 + "0", DigestInvalidLengthError),
        ("sha512:" + HEX64, DigestInvalidLengthError),
        ("sha3+256:abc", DigestUnsupportedError),  # well-formed algorithm grammar
        ("multihash.sha-256:QmYw", DigestUnsupportedError),
        ("sha__256:abc", DigestInvalidFormatError),  # bad algorithm separator
        ("md5:", DigestInvalidFormatError),
        ("sha256:" + HEX64 + "\n", DigestInvalidLengthError),
    ],
)
def test_invalid_digests_get_the_contract_reason(digest: str, error: type[DescriptorError]) -> None:
    with pytest.raises(DescriptorError) as info:
        validate_digest(digest)
    assert type(info.value) is error
    assert not is_valid_digest(digest)


def test_order_of_checks() -> None:
    # An unsupported algorithm is reported before the length: md5 with a sha256-length hex.
    with pytest.raises(DigestUnsupportedError):
        validate_digest("md5:" + HEX64)
    # Length is checked before hex: wrong length AND non-hex is LENGTH.
    with pytest.raises(DigestInvalidLengthError):
        validate_digest("sha256:XYZ")
    # Unsupported but not matching DigestRegexp (bad encoded characters) is FORMAT.
    with pytest.raises(DigestInvalidFormatError):
        validate_digest("md5:a/b")


def test_error_messages_are_bounded() -> None:
    with pytest.raises(DigestInvalidFormatError) as info:
        validate_digest("x" * 10_000)
    assert len(str(info.value)) < 200


def test_parts() -> None:
    digest = "sha256:" + HEX64
    assert algorithm_of(digest) == "sha256"
    assert hex_of(digest) == HEX64


@pytest.mark.parametrize(
    "name",
    [
        "",  # the global scope
        "library/ubuntu",
        "team/app.v2/x__y",
        "foo/bar",
        "a",
        "a-b--c/d_e/f.g",
        "0/1/2",
        "a" * MAX_REPOSITORY_LENGTH,
        "/".join(["ab"] * 85),  # 254 characters
    ],
)
def test_valid_repository_names(name: str) -> None:
    assert validate_repository(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "Foo/Bar",
        "foo//bar",
        "foo/bar:tag",
        "localhost:5000/x",
        "../x",
        "/etc",
        "foo/",
        "foo/bar@sha256:" + HEX64,
        "foo/-bar",
        "foo/bar-",
        "foo/.bar",
        "foo___bar",
        "foo bar",
        "foo/bar\n",
        "a" * (MAX_REPOSITORY_LENGTH + 1),
        "ab/" * 85 + "a",  # 256 characters of valid components
    ],
)
def test_invalid_repository_names(name: str) -> None:
    with pytest.raises(RepositoryNameInvalidError):
        validate_repository(name)
