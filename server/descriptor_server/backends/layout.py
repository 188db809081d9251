"""Distribution's storage layout: where a blob's data and a repository's link live.

Shared by the ``filesystem`` backend (paths under a root directory) and the ``s3``
backend (keys under a root prefix). Every function returns the path as a tuple of
components relative to the storage root, built from an already validated digest and
repository name, so no component is ever empty, ``.`` or ``..``.

:class:`LayoutBackend` is what the two backends share beyond paths: blocking storage
calls run in a thread pool, off the event loop, behind the same validation and the
same protocol methods; each backend supplies ``_stat``, ``_clear``, ``_probe`` and
how a storage error reads (``_storage_error``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from descriptor_client.descriptor import Descriptor
from descriptor_client.digest import algorithm_of, hex_of, is_valid_digest, validate_digest, validate_repository
from descriptor_client.errors import BackendUnavailableError, BlobUnknownError, DescriptorError, UnsupportedError

from ..core import loggers

log = logging.getLogger(loggers.LAYOUT)

T = TypeVar("T")

#: A link holds one digest; anything longer is corrupt.
MAX_LINK_SIZE = 4096

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


class LayoutBackend:
    """A backend over distribution's layout whose storage calls block (disk, boto3)."""

    #: The name used in messages ("filesystem", "s3").
    kind = "layout"

    def __init__(self, *, max_workers: int, thread_name_prefix: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=thread_name_prefix)

    # -- what each backend supplies (blocking; run in the pool) ------------------

    def _stat_blob(self, digest: str) -> Descriptor:
        """The descriptor of the blob's ``data``, or BlobUnknownError."""
        raise NotImplementedError

    def _read_link_bytes(self, repository: str, digest: str) -> bytes:
        """At most ``MAX_LINK_SIZE + 1`` bytes of the link, or BlobUnknownError."""
        raise NotImplementedError

    def _clear(self, digest: str, repository: str) -> None:
        raise NotImplementedError

    def _probe(self) -> None:
        raise NotImplementedError

    def _storage_error(self, err: Exception) -> BackendUnavailableError:
        """The error a failed storage call answers (the backend logs it here too)."""
        return BackendUnavailableError(f"{self.kind} error: {err}")

    # -- shared ----------------------------------------------------------------------

    def _read_link(self, repository: str, digest: str) -> str:
        """The canonical digest a repository's link names (a corrupt link is UNAVAILABLE)."""
        content = self._read_link_bytes(repository, digest)
        target = content.decode("utf-8", "replace").strip()
        if len(content) > MAX_LINK_SIZE or not is_valid_digest(target):
            log.warning("corrupt %s link for %s in %s", self.kind, digest, repository)
            raise BackendUnavailableError(f"corrupt link for {digest} in {repository}")
        return target

    def _stat(self, digest: str, repository: str) -> Descriptor:
        if not repository:
            return self._stat_blob(digest)
        canonical = self._read_link(repository, digest)
        try:
            return self._stat_blob(canonical)
        except BlobUnknownError:
            raise BlobUnknownError.of(digest, repository) from None

    async def _run(self, fn: Callable[..., T], *args: str) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        except DescriptorError:
            raise
        except Exception as err:
            raise self._storage_error(err) from None

    async def stat(self, digest: str, repository: str = "") -> Descriptor:
        validate_digest(digest)
        validate_repository(repository)
        return await self._run(self._stat, digest, repository)

    async def set_descriptor(self, digest: str, descriptor: Descriptor, repository: str = "") -> None:
        raise UnsupportedError(f"the {self.kind} backend is written by the registry, not by this service")

    async def clear(self, digest: str, repository: str = "") -> None:
        validate_digest(digest)
        validate_repository(repository)
        await self._run(self._clear, digest, repository)

    def supports_clear(self, repository: str) -> bool:
        return True

    async def probe(self) -> None:
        """Health: the storage answers (BackendUnavailableError otherwise)."""
        await self._run(self._probe)

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


__all__ = ["V2", "LayoutBackend", "blob_data", "blob_dir", "link"]
