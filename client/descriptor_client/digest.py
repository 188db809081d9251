"""Digest and repository-name validation: the service's one set of rules for both.

Digests follow ``opencontainers/go-digest``: ``algorithm:encoded``; supported
``sha256`` (64 hex), ``sha384`` (96) and ``sha512`` (128), lowercase hex only.
Repository names are the ``<name>`` of the OCI distribution spec.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

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
# Fast path: a well-formed supported digest (the overwhelming majority of calls),
# built from ALGORITHMS so that a new algorithm is added in one place.
_VALID_SOURCE = "|".join(f"{alg}:[a-f0-9]{{{length}}}" for alg, length in ALGORITHMS.items())
_VALID = re.compile(_VALID_SOURCE)
# A whole batch of valid digests, one per line, checked by one regex call.
_VALID_LINES = re.compile(rf"(?:(?:{_VALID_SOURCE})\n)*")

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


def all_valid(digests: Sequence[str]) -> bool:
    """True if every digest is valid and supported: one C-level match for the batch."""
    if not digests:
        return True
    joined = "\n".join(digests) + "\n"
    # Each digest adds one separator; a valid digest has no newline, so the counts
    # agree only when every line is exactly one digest.
    return joined.count("\n") == len(digests) and _VALID_LINES.fullmatch(joined) is not None


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
    "all_valid",
    "hex_of",
    "is_valid_digest",
    "validate_digest",
    "validate_repository",
]
