"""The ``s3`` backend: distribution's storage layout in an S3 bucket (boto3).

Keys are distribution's s3 driver's: ``rootdirectory`` (without its leading and
trailing ``/``) followed by the filesystem layout path, for example
``registry/docker/registry/v2/blobs/sha256/ab/ab.../data``.

- global Stat: a HEAD of the blob's ``data`` object; size is its ``Content-Length``,
  media type ``application/octet-stream``.
- repository Stat: the link object holds the canonical digest; that blob is then
  HEAD'ed.
- repository Clear deletes the link object (distribution's soft delete); global Clear
  deletes the blob's ``data`` object. Either is BLOB_UNKNOWN if the object is absent.

boto3 is blocking, so every call runs in a thread pool, off the event loop; the one
client is thread-safe and keeps a pool of connections. A missing object is
BLOB_UNKNOWN; anything else (unreachable endpoint, timeout, missing bucket, refused
credentials) is BACKEND_UNAVAILABLE.
"""

from __future__ import annotations

import logging
import time
from typing import Any, TypeVar

from descriptor_client.descriptor import OCTET_STREAM, Descriptor
from descriptor_client.errors import (
    BackendUnavailableError,
    BlobUnknownError,
)

from ..config import ConfigError, S3Config
from ..core import loggers
from ..core.logutil import RateLimitedLog
from . import layout

log = logging.getLogger(loggers.S3)

T = TypeVar("T")

MAX_LINK_SIZE = layout.MAX_LINK_SIZE
#: Seconds during which a bucket seen once is trusted to exist.
BUCKET_RECHECK = 30.0
_MISSING = ("404", "NoSuchKey", "NotFound")


class S3Backend(layout.LayoutBackend):
    """Blob descriptors read from (and cleared in) distribution's layout in a bucket."""

    kind = "s3"

    def __init__(self, client: Any, bucket: str, rootdirectory: str = "", *, max_workers: int = 16) -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix="s3-backend")
        self.client = client
        self.bucket = bucket
        root = rootdirectory.strip("/")
        self.prefix = f"{root}/" if root else ""
        self._bucket_seen = float("-inf")
        self._log = RateLimitedLog(log)

    # -- keys ------------------------------------------------------------------------

    def data_key(self, digest: str) -> str:
        return self.prefix + "/".join(layout.blob_data(digest))

    def link_key(self, repository: str, digest: str) -> str:
        return self.prefix + "/".join(layout.link(repository, digest))

    # -- blocking operations (run in the pool) -----------------------------------------

    def _head(self, key: str) -> int | None:
        """The object's size, or None when it does not exist."""
        try:
            resp = self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as err:
            if _is_missing(err):
                self._check_bucket()
                return None
            raise
        return int(resp["ContentLength"])

    def _check_bucket(self) -> None:
        """A missing bucket is a broken backend, not an unknown blob.

        S3 answers a HEAD of a missing key and of a key in a missing bucket alike (404,
        no body), so the bucket itself is checked, at most once per ``BUCKET_RECHECK``.
        """
        now = time.monotonic()
        if now - self._bucket_seen < BUCKET_RECHECK:
            return
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as err:
            if _is_missing(err):
                raise BackendUnavailableError(f"bucket {self.bucket!r} does not exist") from None
            raise
        self._bucket_seen = now

    def _stat_blob(self, digest: str) -> Descriptor:
        size = self._head(self.data_key(digest))
        if size is None:
            raise BlobUnknownError.of(digest)
        return Descriptor(OCTET_STREAM, digest, size)

    def _read_link_bytes(self, repository: str, digest: str) -> bytes:
        try:
            resp = self.client.get_object(
                Bucket=self.bucket, Key=self.link_key(repository, digest), Range=f"bytes=0-{MAX_LINK_SIZE}"
            )
            with resp["Body"] as body:
                content: bytes = body.read(MAX_LINK_SIZE + 1)
        except Exception as err:
            if _is_missing(err):
                self._check_bucket()
                raise BlobUnknownError.of(digest, repository) from None
            raise
        return content

    def _clear(self, digest: str, repository: str) -> None:
        key = self.link_key(repository, digest) if repository else self.data_key(digest)
        # S3 deletes absent keys silently: look first, to answer BLOB_UNKNOWN.
        if self._head(key) is None:
            raise BlobUnknownError.of(digest, repository)
        self.client.delete_object(Bucket=self.bucket, Key=key)

    def _storage_error(self, err: Exception) -> BackendUnavailableError:
        self._log.warning("s3 backend: %s", _describe(err))
        return BackendUnavailableError(f"s3 error: {_describe(err)}")

    def _probe(self) -> None:
        self.client.head_bucket(Bucket=self.bucket)

    async def close(self) -> None:
        await super().close()
        close = getattr(self.client, "close", None)
        if close is not None:
            close()


def _is_missing(err: Exception) -> bool:
    response = getattr(err, "response", None)
    if not isinstance(response, dict):
        return False
    code = str(response.get("Error", {}).get("Code", ""))
    return code in _MISSING


def _describe(err: BaseException) -> str:
    response = getattr(err, "response", None)
    if isinstance(response, dict):
        error = response.get("Error", {})
        return f"{error.get('Code', '?')}: {error.get('Message', '') or err}"
    return f"{type(err).__name__}: {err}"


def from_config(section: S3Config) -> S3Backend:
    """The backend for ``storage.s3``."""
    try:
        import boto3
        from botocore.config import Config as BotoConfig
    except ImportError:
        raise ConfigError("storage.s3", "the s3 backend needs boto3: pip install 'descriptor-service[s3]'") from None
    if bool(section.accesskey) != bool(section.secretkey):
        raise ConfigError("storage.s3", "accesskey and secretkey go together")
    endpoint = section.regionendpoint or None
    if endpoint is not None and "://" not in endpoint:
        endpoint = "https://" + endpoint
    boto_config = BotoConfig(
        region_name=section.region or None,
        s3={"addressing_style": "path" if section.forcepathstyle else "virtual"},
        connect_timeout=5,
        read_timeout=10,
        retries={"mode": "standard", "max_attempts": 3},
        max_pool_connections=16,
    )
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=section.accesskey or None,
        aws_secret_access_key=section.secretkey or None,
        config=boto_config,
    )
    return S3Backend(client, section.bucket, section.rootdirectory)
