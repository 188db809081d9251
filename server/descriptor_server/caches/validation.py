"""Input checks every cache applies before it reads or writes (the order of docs/api.md, Errors)."""

from __future__ import annotations

from descriptor_client.descriptor import Descriptor, validate_descriptor
from descriptor_client.digest import algorithm_of, validate_digest, validate_repository


def check_key(digest: str, repository: str) -> None:
    """Validate the key digest, then the repository."""
    validate_digest(digest)
    validate_repository(repository)


def check_set(digest: str, descriptor: Descriptor, repository: str) -> str | None:
    """Validate a SetDescriptor; return the alias digest to store too, if any.

    The alias is the descriptor's own digest when it uses another algorithm than
    the key (docs/api.md, Semantics).
    """
    check_key(digest, repository)
    validate_descriptor(digest, descriptor)
    if descriptor.digest != digest and algorithm_of(descriptor.digest) != algorithm_of(digest):
        return descriptor.digest
    return None
