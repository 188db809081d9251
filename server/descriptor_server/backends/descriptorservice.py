"""The ``descriptorservice`` backend: another instance of this service, over gRPC.

One service caches in front of another (an edge cache before a central one). Stat
and Clear go to the other service through our own asyncio client, in the same scope;
SetDescriptor never reaches a backend (the statter writes to its own cache only).

Errors keep their meaning for the caller of the front service: BLOB_UNKNOWN,
UNSUPPORTED and invalid-input errors pass through; everything that means "the other
service cannot answer now" -- unreachable, timed out, draining, overloaded, or
refusing our token -- becomes BACKEND_UNAVAILABLE, so the front service never
claims to be draining or the caller to lack credentials.
"""

from __future__ import annotations

import logging

from descriptor_client import AsyncDescriptorClient
from descriptor_client.descriptor import Descriptor
from descriptor_client.digest import validate_digest, validate_repository
from descriptor_client.errors import (
    BackendUnavailableError,
    BlobUnknownError,
    DescriptorError,
    InvalidArgumentError,
    UnsupportedError,
)
from descriptor_client.tls import ClientTLS

from ..config import ConfigError, DescriptorServiceBackendConfig
from ..core import loggers
from ..core.logutil import RateLimitedLog

log = logging.getLogger(loggers.DESCRIPTOR_SERVICE)

#: Errors of the other service that mean the same to our caller.
_PASS_THROUGH = (BlobUnknownError, UnsupportedError, InvalidArgumentError)


class DescriptorServiceBackend:
    """Blob descriptors from another descriptor service."""

    def __init__(self, client: AsyncDescriptorClient) -> None:
        self.client = client
        self._log = RateLimitedLog(log)

    def _translate(self, err: DescriptorError, verb: str) -> DescriptorError:
        if isinstance(err, _PASS_THROUGH):
            return err
        self._log.warning("descriptor service %s: %s failed: %s", self.client.target, verb, err)
        return BackendUnavailableError(f"descriptor service {self.client.target}: {err}")

    async def stat(self, digest: str, repository: str = "") -> Descriptor:
        validate_digest(digest)
        validate_repository(repository)
        try:
            return await self.client.stat(digest, repository)
        except DescriptorError as err:
            raise self._translate(err, "Stat") from None

    async def set_descriptor(self, digest: str, descriptor: Descriptor, repository: str = "") -> None:
        raise UnsupportedError("SetDescriptor writes to this service's cache only, never to its backend")

    async def clear(self, digest: str, repository: str = "") -> None:
        validate_digest(digest)
        validate_repository(repository)
        try:
            await self.client.clear(digest, repository)
        except DescriptorError as err:
            raise self._translate(err, "Clear") from None

    def supports_clear(self, repository: str) -> bool:
        # The other service decides; its UNSUPPORTED passes through.
        return True

    async def probe(self) -> None:
        """Health: the other service reports itself SERVING (its own backend passes its probe).

        A health check, not a call of the service: it never counts in the other
        service's metrics, and never keeps it from finishing a drain.
        """
        try:
            status = await self.client.health()
        except DescriptorError as err:
            raise BackendUnavailableError(f"descriptor service {self.client.target}: {err}") from None
        if status != "SERVING":
            raise BackendUnavailableError(f"descriptor service {self.client.target}: health {status}")

    async def close(self) -> None:
        await self.client.close()


def from_config(section: DescriptorServiceBackendConfig) -> DescriptorServiceBackend:
    """The backend for ``storage.descriptorservice``."""
    if section.timeout <= 0:
        raise ConfigError("storage.descriptorservice.timeout", "must be > 0")
    tls_section = section.tls
    tls: ClientTLS | None = None
    if tls_section.enabled:
        if bool(tls_section.certificate) != bool(tls_section.key):
            raise ConfigError("storage.descriptorservice.tls", "certificate and key go together")
        try:
            tls = ClientTLS.from_files(
                tls_section.ca or None,
                tls_section.certificate or None,
                tls_section.key or None,
                tls_section.servername or None,
            )
        except OSError as err:
            raise ConfigError("storage.descriptorservice.tls", f"cannot read {err.filename}: {err.strerror}") from None
    elif tls_section.ca or tls_section.certificate or tls_section.key or tls_section.servername:
        raise ConfigError("storage.descriptorservice.tls.enabled", "TLS files are set but TLS is not enabled")
    client = AsyncDescriptorClient(section.target, timeout=section.timeout, token=section.token, tls=tls)
    return DescriptorServiceBackend(client)
