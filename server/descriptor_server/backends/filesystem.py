"""The ``filesystem`` backend: distribution's storage layout under a root directory.

- global Stat: ``docker/registry/v2/blobs/<alg>/<hex[:2]>/<hex>/data``; size is the
  file size, media type ``application/octet-stream``.
- repository Stat: the link file
  ``docker/registry/v2/repositories/<name>/_layers/<alg>/<hex>/link`` holds the
  canonical digest; that blob is then stat'ed.
- repository Clear deletes the link (distribution's soft delete), leaving its
  directory as distribution does; global Clear deletes the blob's data.

Every path is built from a validated digest and repository name, and resolved
against the real root before use: nothing outside the root is read or deleted,
symbolic links included. Disk I/O runs in a thread pool, off the event loop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from typing import TypeVar

from descriptor_client.descriptor import OCTET_STREAM, Descriptor
from descriptor_client.errors import BackendUnavailableError, BlobUnknownError

from ..core import loggers
from . import layout

log = logging.getLogger(loggers.FILESYSTEM)

T = TypeVar("T")

V2 = os.path.join(*layout.V2)
MAX_LINK_SIZE = layout.MAX_LINK_SIZE


class PathEscapeError(Exception):
    """A path resolved outside the root directory."""


class FilesystemBackend(layout.LayoutBackend):
    """Blob descriptors read from (and cleared in) distribution's on-disk layout."""

    kind = "filesystem"

    def __init__(self, rootdirectory: str, *, max_workers: int = 8) -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix="fs-backend")
        self.root = os.path.abspath(rootdirectory)
        if not os.path.isdir(self.root):
            log.warning("storage root %s does not exist: every Stat is BLOB_UNKNOWN until it does", self.root)

    # -- paths ---------------------------------------------------------------

    def blob_dir(self, digest: str) -> str:
        return os.path.join(self.root, *layout.blob_dir(digest))

    def blob_data_path(self, digest: str) -> str:
        return os.path.join(self.root, *layout.blob_data(digest))

    def link_path(self, repository: str, digest: str) -> str:
        return os.path.join(self.root, *layout.link(repository, digest))

    def _confined(self, path: str) -> str:
        """``path`` with every symbolic link resolved, if that stays inside the root."""
        real_root = os.path.realpath(self.root)
        real = os.path.realpath(path)
        prefix = real_root if real_root.endswith(os.sep) else real_root + os.sep
        if real != real_root and not real.startswith(prefix):
            raise PathEscapeError(path)
        return real

    # -- blocking operations (run in the pool) --------------------------------

    def _stat_blob(self, digest: str) -> Descriptor:
        try:
            st = os.stat(self._confined(self.blob_data_path(digest)))
        except (FileNotFoundError, NotADirectoryError, PathEscapeError):
            raise BlobUnknownError.of(digest) from None
        if not _is_regular(st.st_mode):
            raise BlobUnknownError.of(digest)
        return Descriptor(OCTET_STREAM, digest, st.st_size)

    def _read_link_bytes(self, repository: str, digest: str) -> bytes:
        try:
            path = self._confined(self.link_path(repository, digest))
            with open(path, "rb") as f:
                return f.read(MAX_LINK_SIZE + 1)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PathEscapeError):
            raise BlobUnknownError.of(digest, repository) from None

    def _clear(self, digest: str, repository: str) -> None:
        path = self.link_path(repository, digest) if repository else self.blob_data_path(digest)
        try:
            # The entry must resolve inside the root (as for Stat); what is removed is
            # the entry itself, in its resolved directory: a symbolic link is
            # unlinked, never the file it points to.
            if os.path.isdir(self._confined(path)):
                raise BlobUnknownError.of(digest, repository)
            parent = self._confined(os.path.dirname(path))
            os.unlink(os.path.join(parent, os.path.basename(path)))
        except (FileNotFoundError, NotADirectoryError, PathEscapeError):
            raise BlobUnknownError.of(digest, repository) from None
        if repository:
            # A link's directory stays, as distribution's own link delete leaves it: a
            # registry writing the same link meanwhile (its directory made, the link's
            # temporary file not yet created in it) would fail the push if it went.
            return
        # The blob's now-empty directory goes, as distribution's garbage collector
        # removes it.
        with contextlib.suppress(OSError):
            os.rmdir(parent)

    def _storage_error(self, err: Exception) -> BackendUnavailableError:
        log.warning("filesystem backend: %s", err)
        reason = err.strerror if isinstance(err, OSError) and err.strerror else err
        return BackendUnavailableError(f"storage error: {reason}")

    def _probe(self) -> None:
        try:
            st = os.stat(self.root)
            if not stat.S_ISDIR(st.st_mode):
                raise BackendUnavailableError(f"storage root {self.root} is not a directory")
            with os.scandir(self.root) as entries:
                next(entries, None)
        except OSError as err:
            raise BackendUnavailableError(f"storage root {self.root}: {err.strerror or err}") from None


def _is_regular(mode: int) -> bool:
    return stat.S_ISREG(mode)
