"""The ``redis`` cache: distribution's Redis layout, shared with registries and replicas.

- :mod:`.keys`: the key layout (distribution's keys and this service's own);
- :mod:`.scripts`: the Lua scripts (single server and Sentinel);
- :mod:`.cache`: :class:`RedisCache`, the cache itself;
- :mod:`.connection`: clients and pools for each topology, :func:`from_config`;
- :mod:`.near`: the near cache in this process, kept coherent by Redis;
- :mod:`.nearlease`: the leases and barriers that make a Clear final across near caches.
"""

from __future__ import annotations

from .cache import RedisCache, RedisCacheError
from .connection import from_config

__all__ = ["RedisCache", "RedisCacheError", "from_config"]
