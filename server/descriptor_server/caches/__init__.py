"""Caches: each module implements :class:`Cache` in front of a backend.

- ``inmemory``: bounded, scan-resistant, in this process.
- ``redis``: distribution's Redis layout, shared with registries and other replicas (a
  package: key layout, Lua scripts, the cache, connections, the near cache).
- ``none``: caches nothing (every Stat goes to the backend).

The protocol itself lives in :mod:`descriptor_server.core.cache` (the statter's side);
the server finds a cache by its ``storage.cache.blobdescriptor`` name in
:mod:`descriptor_server.app.components`.
"""

from __future__ import annotations

from ..core.cache import Cache, Taken

__all__ = ["Cache", "Taken"]
