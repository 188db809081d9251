"""The frozen Descriptor, media type syntax and descriptor validation (docs/api.md, Errors and Semantics)."""

from __future__ import annotations

import dataclasses

import pytest
from descriptor_client import (
    OCTET_STREAM,
    Descriptor,
    DescriptorInvalidError,
    DigestInvalidFormatError,
    validate_descriptor,
    validate_media_type,
)
from descriptor_client.descriptor import MAX_MEDIA_TYPE_LENGTH

S256 = "sha256:" + "a" * 64
S256B = "sha256:" + "b" * 64
S384 = "sha384:" + "c" * 96
S512 = "sha512:" + "d" * 128


@pytest.mark.parametrize(
    "media_type",
    [
        OCTET_STREAM,
        "application/json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "text/plain; charset=utf-8",
        "text/plain;charset=utf-8",
        'multipart/mixed; boundary="a b c"',
        "application/x.a-b_c!#$&^",
        "a/" + "b" * 127,
    ],
)
def test_valid_media_types(media_type: str) -> None:
    assert validate_media_type(media_type) == media_type


@pytest.mark.parametrize(
    "media_type",
    [
        "",
        "application",
        "application/",
        "/json",
        "application/json/x",
        "application /json",
        "application/json;",
        "application/json; charset",
        "application/json; =x",
        "-app/json",
        "application/+json",
        "application/jsön",
        "application/json\n",
        # no control character anywhere, parameters included
        "text/plain;\ncharset=utf-8",
        "text/plain\n; charset=utf-8",
        "text/plain;\x0bcharset=utf-8",
        'text/plain; name="a\nb"',
        'text/plain; name="a\x00b"',
        'text/plain; name="\u00e9"',
        "a/" + "b" * 128,  # subtype over RFC 6838's 127 characters
        "application/" + "x" * (MAX_MEDIA_TYPE_LENGTH - len("application/") + 1),
    ],
)
def test_invalid_media_types(media_type: str) -> None:
    with pytest.raises(DescriptorInvalidError):
        validate_media_type(media_type)


def test_media_type_length_limit_is_255() -> None:
    base = "application/x; p="
    at_limit = base + "v" * (MAX_MEDIA_TYPE_LENGTH - len(base))
    assert len(at_limit) == 255
    assert validate_media_type(at_limit) == at_limit
    with pytest.raises(DescriptorInvalidError, match="255"):
        validate_media_type(at_limit + "v")


def test_descriptor_is_frozen_and_has_the_oci_json_shape() -> None:
    desc = Descriptor(OCTET_STREAM, S256, 10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        desc.size = 11  # type: ignore[misc]
    assert desc.to_json() == {"digest": S256, "mediaType": OCTET_STREAM, "size": 10}
    assert desc == Descriptor(OCTET_STREAM, S256, 10)
    assert hash(desc) == hash(Descriptor(OCTET_STREAM, S256, 10))


def test_valid_descriptor_under_its_own_digest() -> None:
    desc = Descriptor(OCTET_STREAM, S256, 0)
    assert validate_descriptor(S256, desc) is desc


@pytest.mark.parametrize("key", [S384, S512])
def test_alias_with_another_algorithm_is_valid(key: str) -> None:
    desc = Descriptor(OCTET_STREAM, S256, 10)
    assert validate_descriptor(key, desc) is desc


def test_same_algorithm_different_digest_is_invalid() -> None:
    with pytest.raises(DescriptorInvalidError, match="same algorithm"):
        validate_descriptor(S256, Descriptor(OCTET_STREAM, S256B, 10))


def test_negative_size_is_invalid() -> None:
    with pytest.raises(DescriptorInvalidError, match="negative"):
        validate_descriptor(S256, Descriptor(OCTET_STREAM, S256, -1))


@pytest.mark.parametrize("digest", ["", "sha256:", "md5:abc", "sha384:abc", "sha256:" + "A" * 64])
def test_bad_descriptor_digest_is_descriptor_invalid_not_a_digest_error(digest: str) -> None:
    with pytest.raises(DescriptorInvalidError) as info:
        validate_descriptor(S256, Descriptor(OCTET_STREAM, digest, 1))
    assert not isinstance(info.value, DigestInvalidFormatError)
    assert info.value.reason == "DESCRIPTOR_INVALID"


def test_bad_media_type_in_descriptor() -> None:
    with pytest.raises(DescriptorInvalidError):
        validate_descriptor(S256, Descriptor("", S256, 1))
    with pytest.raises(DescriptorInvalidError):
        validate_descriptor(S256, Descriptor("x" * 300, S256, 1))
