"""The Redis cache's key layout: distribution's keys, and this service's own.

Keys (exactly distribution's ``registry/storage/cache/redis``, so one Redis or Valkey
deployment can be shared with distribution registries):

- hash ``blobs::<digest>`` with fields ``digest``, ``size`` (decimal) and ``mediatype``;
- set ``repository::<name>::blobs`` of the digests the repository holds;
- hash ``repository::<name>::blobs::<digest>`` with field ``mediatype``.

No TTLs are set on those (operators configure ``maxmemory-policy allkeys-lru``).

Three keys of this service's own carry the generation rule of :mod:`descriptor_server.caches`
(distribution registries neither set nor read them):

- ``descriptor::epoch``: the epoch. Each invalidation sets it to the larger of its value
  plus one and Redis's clock in microseconds, so it keeps growing even when the key is
  evicted or the data flushed (a token read before cannot look newer than a later
  invalidation);
- ``descriptor::cleared::<digest>``: the epoch of the digest's last invalidation (the
  *fence*), standing ``fence_ttl`` seconds (longer than a backend read may take); absent
  counts as never invalidated;
- ``descriptor::epoch::since``: the epoch at which this Redis's generation state began.
  A restart, a flush or an eviction loses it with the fences; the next token then starts
  a new one, and a write-back or SetDescriptor holding a token from before it is refused
  (single server and Sentinel; see docs/reliability.md for Cluster).

Beside them, the set ``descriptor::aliases::<digest>`` lists the digests stored as
aliases of a canonical digest (a global Clear of it removes theirs too), and the near
caches' leases and barriers have keys of their own (``descriptor::nearcache::*``, in
:mod:`.nearlease`).
"""

from __future__ import annotations


def blob_key(digest: str) -> str:
    return f"blobs::{digest}"


#: The fence a Clear leaves (this service's key; distribution registries neither set nor read it).
FENCE_PREFIX = "descriptor::cleared::"
#: The epoch (this service's key).
EPOCH_KEY = "descriptor::epoch"
#: The epoch at which this Redis's copy of the generation state began (this service's
#: key): absent after a restart, a flush or an eviction, which lose the fences too.
SINCE_KEY = "descriptor::epoch::since"
#: The digests stored as aliases of a canonical digest (this service's key).
ALIASES_PREFIX = "descriptor::aliases::"


def aliases_key(canonical: str) -> str:
    return f"{ALIASES_PREFIX}{canonical}"


def fence_key(digest: str) -> str:
    return f"{FENCE_PREFIX}{digest}"


def repository_set_key(repository: str) -> str:
    return f"repository::{repository}::blobs"


def repository_blob_key(repository: str, digest: str) -> str:
    return f"repository::{repository}::blobs::{digest}"
