"""The frozen blob descriptor and its validation (docs/api.md)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .digest import algorithm_of, validate_digest
from .errors import DescriptorError, DescriptorInvalidError

OCTET_STREAM = "application/octet-stream"
MAX_MEDIA_TYPE_LENGTH = 255

# RFC 6838 restricted names: type "/" subtype (a "+suffix" is part of the subtype
# characters), then optional ";" parameters (token=token or token="quoted"), with only
# spaces around ";" and printable ASCII in quotes: no control character anywhere.
_NAME = r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
_PARAM = r" *; *[A-Za-z0-9!#$&^_.+-]+=(?:[A-Za-z0-9!#$&^_.+-]+|\"[ \x21\x23-\x5b\x5d-\x7e]*\")"
_MEDIA_TYPE = re.compile(rf"{_NAME}/{_NAME}(?:{_PARAM})*")


@dataclass(frozen=True, slots=True)
class Descriptor:
    """A blob descriptor: ``(media type, digest, size)``."""

    media_type: str
    digest: str
    size: int

    def to_json(self) -> dict[str, object]:
        """The OCI JSON shape: ``{"digest": ..., "mediaType": ..., "size": ...}``."""
        return {"digest": self.digest, "mediaType": self.media_type, "size": self.size}


def validate_media_type(media_type: str) -> str:
    """Return ``media_type`` if it is a valid media type of at most 255 characters."""
    if not media_type:
        raise DescriptorInvalidError("descriptor media type is empty")
    if len(media_type) > MAX_MEDIA_TYPE_LENGTH:
        raise DescriptorInvalidError(
            f"descriptor media type is {len(media_type)} characters, at most {MAX_MEDIA_TYPE_LENGTH} allowed"
        )
    if not _MEDIA_TYPE.fullmatch(media_type):
        raise DescriptorInvalidError(f"descriptor media type {media_type[:80]!r} is not type/subtype")
    return media_type


def validate_descriptor(key: str, desc: Descriptor) -> Descriptor:
    """Validate a descriptor to be stored under the (already validated) key digest.

    The descriptor's digest must be valid, and equal to the key unless it uses
    another algorithm (an alias). Size must be >= 0 and the media type well formed.
    """
    try:
        validate_digest(desc.digest)
    except DescriptorError as err:
        raise DescriptorInvalidError(f"descriptor digest: {err.message}") from None
    if desc.digest != key and algorithm_of(desc.digest) == algorithm_of(key):
        raise DescriptorInvalidError(f"descriptor digest {desc.digest} differs from {key} but uses the same algorithm")
    if desc.size < 0:
        raise DescriptorInvalidError(f"descriptor size {desc.size} is negative")
    validate_media_type(desc.media_type)
    return desc


__all__ = ["MAX_MEDIA_TYPE_LENGTH", "OCTET_STREAM", "Descriptor", "validate_descriptor", "validate_media_type"]
