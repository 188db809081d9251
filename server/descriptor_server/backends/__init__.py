"""Backends: the source of truth behind the cache, one module each.

- ``filesystem``: distribution's on-disk layout (``layout``), read directly;
- ``registry``: a registry's HTTP API (HEAD of the blob);
- ``descriptorservice``: another descriptor service (a tier in front of it);
- ``s3``: distribution's layout in an S3 bucket.

The protocol itself lives in :mod:`descriptor_server.core.backend`; the server finds a
backend by its ``storage`` section's name in :mod:`descriptor_server.app.components`.
Their bounds (timeout, in-flight limit) wrap them in :mod:`descriptor_server.wrappers`.
"""

from __future__ import annotations

from ..core.backend import Backend

__all__ = ["Backend"]
