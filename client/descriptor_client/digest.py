"""Digest and repository-name validation, with the exact rules of CONTRACT section 2.

Digests follow ``opencontainers/go-digest``: ``algorithm:encoded``; supported
``sha256`` (64 hex), ``sha384`` (96) and ``sha512`` (128), lowercase hex only.
Repository names are the ``<name>`` of the OCI distribution spec.
"""

from __future__ import annotations

import re

from .errors import (
    DigestInvalidFormatError,
    DigestInvalidLengthError,
    DigestUnsupportedError,
    RepositoryNameInvalidError,
)

#: Supported algorithms and the length of their hex encoding.
ALGORITHMS: dict[str, int] = {"sha256": 64, "sha384": 96, "sha512": 128}

_ALGORITHM = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*")
_DIGEST_REGEXP = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
_LOWER_HEX = re.compile(r"[a-f0-9]+")
# Fast path: a well-formed supported digest (the overwhelming majority of calls).
_VALID = re.compile(r"sha256:[a-f0-9]{64}|sha384:[a-f0-9]{96}|sha512:[a-f0-9]{128}")

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
MAX_REPOSITORY_LENGTH = 255


def validate_digest(digest: str) -> str:
    """Return ``digest`` if valid, else raise the contract's digest error.

    Order of checks: missing ``:`` or an empty side is FORMAT; an unsupported
    algorithm is UNSUPPORTED when the whole digest matches go-digest's
    ``DigestRegexp``, else FORMAT; then a wrong length is LENGTH; then non-hex is FORMAT.
    """
    if _VALID.fullmatch(digest):
        return digest
    algorithm, sep, encoded = digest.partition(":")
    if not sep or not algorithm or not encoded:
        raise DigestInvalidFormatError(f"invalid digest {_show(digest)}: want algorithm:hex")
    length = ALGORITHMS.get(algorithm)
    if length is None:
        if _DIGEST_REGEXP.fullmatch(digest):
            raise DigestUnsupportedError(f"unsupported digest algorithm {_show(algorithm)}")
        raise DigestInvalidFormatError(f"invalid digest {_show(digest)}")
    if len(encoded) != length:
        raise DigestInvalidLengthError(
            f"invalid digest length for {algorithm}: {len(encoded)} hex characters, want {length}"
        )
    if not _LOWER_HEX.fullmatch(encoded):
        raise DigestInvalidFormatError(f"invalid digest {_show(digest)}: want lowercase hex")
    return digest  # pragma: no cover - the fast path accepts every valid digest


def is_valid_digest(digest: str) -> bool:
    """True if ``digest`` is a valid, supported digest."""
    return _VALID.fullmatch(digest) is not None


def algorithm_of(digest: str) -> str:
    """The algorithm part of a (validated) digest."""
    return digest.partition(":")[0]


def hex_of(digest: str) -> str:
    """The encoded part of a (validated) digest."""
    return digest.partition(":")[2]


def validate_repository(name: str) -> str:
    """Return ``name`` if it is empty (global scope) or a valid repository name."""
    if not name:
        return name
    if len(name) > MAX_REPOSITORY_LENGTH:
        raise RepositoryNameInvalidError(
            f"repository name is {len(name)} characters, at most {MAX_REPOSITORY_LENGTH} allowed"
        )
    if not _REPOSITORY.fullmatch(name):
        raise RepositoryNameInvalidError(f"invalid repository name {_show(name)}")
    return name


def _show(value: str, limit: int = 80) -> str:
    """A bounded, quoted rendering of user input for error messages."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


__all__ = [
    "ALGORITHMS",
    "MAX_REPOSITORY_LENGTH",
    "algorithm_of",
    "hex_of",
    "is_valid_digest",
    "validate_digest",
    "validate_repository",
]
