"""Distribution's storage layout: where a blob's data and a repository's link live.

Shared by the ``filesystem`` backend (paths under a root directory) and the ``s3``
backend (keys under a root prefix). Every function returns the path as a tuple of
components relative to the storage root, built from an already validated digest and
repository name, so no component is ever empty, ``.`` or ``..``.
"""

from __future__ import annotations

from descriptor_client.digest import algorithm_of, hex_of

#: The root of distribution's layout inside its storage.
V2: tuple[str, ...] = ("docker", "registry", "v2")


def blob_dir(digest: str) -> tuple[str, ...]:
    """``docker/registry/v2/blobs/<alg>/<hex[:2]>/<hex>``."""
    hexpart = hex_of(digest)
    return (*V2, "blobs", algorithm_of(digest), hexpart[:2], hexpart)


def blob_data(digest: str) -> tuple[str, ...]:
    """``docker/registry/v2/blobs/<alg>/<hex[:2]>/<hex>/data``: the blob's bytes."""
    return (*blob_dir(digest), "data")


def link(repository: str, digest: str) -> tuple[str, ...]:
    """``docker/registry/v2/repositories/<name>/_layers/<alg>/<hex>/link``: the canonical digest."""
    return (*V2, "repositories", *repository.split("/"), "_layers", algorithm_of(digest), hex_of(digest), "link")


__all__ = ["V2", "blob_data", "blob_dir", "link"]
