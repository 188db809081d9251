"""Python client for the blob descriptor service (``descriptor.v1.BlobDescriptorService``).

from descriptor_client import DescriptorClient, BlobUnknownError

with DescriptorClient("127.0.0.1:5051") as client:
    desc = client.repository("library/ubuntu").stat("sha256:...")
"""

from .aio import AsyncDescriptorClient, AsyncRepositoryClient
from .client import DescriptorClient, RepositoryClient
from .descriptor import OCTET_STREAM, Descriptor, validate_descriptor, validate_media_type
from .digest import validate_digest, validate_repository
from .errors import (
    ERROR_TABLE,
    BackendUnavailableError,
    BatchTooLargeError,
    BlobUnknownError,
    CallCancelledError,
    DeadlineExceededError,
    DescriptorError,
    DescriptorInvalidError,
    DigestInvalidFormatError,
    DigestInvalidLengthError,
    DigestUnsupportedError,
    InvalidArgumentError,
    PermissionDeniedError,
    RepositoryNameInvalidError,
    RequestInvalidError,
    ResourceExhaustedError,
    ServerDrainingError,
    UnauthenticatedError,
    UnavailableError,
    UnsupportedError,
)
from .metrics import Metrics
from .protocol import BlobDescriptorService, SyncBlobDescriptorService
from .rpcs import RPCS, SERVICE, Rpc
from .tls import ClientTLS


def __getattr__(name: str) -> str:
    """``__version__``, read from the installed distribution on first use."""
    if name == "__version__":
        from ._version import version

        return version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ERROR_TABLE",
    "OCTET_STREAM",
    "RPCS",
    "SERVICE",
    "AsyncDescriptorClient",
    "AsyncRepositoryClient",
    "BackendUnavailableError",
    "BatchTooLargeError",
    "BlobDescriptorService",
    "BlobUnknownError",
    "CallCancelledError",
    "ClientTLS",
    "DeadlineExceededError",
    "Descriptor",
    "DescriptorClient",
    "DescriptorError",
    "DescriptorInvalidError",
    "DigestInvalidFormatError",
    "DigestInvalidLengthError",
    "DigestUnsupportedError",
    "InvalidArgumentError",
    "Metrics",
    "PermissionDeniedError",
    "RepositoryClient",
    "RepositoryNameInvalidError",
    "RequestInvalidError",
    "ResourceExhaustedError",
    "Rpc",
    "ServerDrainingError",
    "SyncBlobDescriptorService",
    "UnauthenticatedError",
    "UnavailableError",
    "UnsupportedError",
    "validate_descriptor",
    "validate_digest",
    "validate_media_type",
    "validate_repository",
]
