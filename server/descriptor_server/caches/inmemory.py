"""The ``inmemory`` cache: bounded, scan-resistant, global and repository scopes.

Entries are kept in a segmented LRU (SLRU): a new entry enters the probationary
segment; a second hit promotes it to the protected segment (80% of capacity).
Eviction takes the least recently used probationary entry first, so a one-off scan
of never-repeated digests churns through probation and cannot flush the hot,
repeatedly-hit working set, which is what distribution uses ARC for.

Capacity counts global and repository entries together; ``0`` means unbounded.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

from descriptor_client.descriptor import Descriptor
from descriptor_client.errors import BlobUnknownError

from .validation import check_key, check_set

K = TypeVar("K")
V = TypeVar("V")

DEFAULT_CAPACITY = 10000
PROTECTED_SHARE = 0.8


class SegmentedLRU(Generic[K, V]):
    """A bounded map with SLRU eviction; ``capacity == 0`` is unbounded."""

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        self.capacity = capacity
        self.protected_capacity = int(capacity * PROTECTED_SHARE)
        self._probation: OrderedDict[K, V] = OrderedDict()
        self._protected: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._probation) + len(self._protected)

    def __contains__(self, key: K) -> bool:
        return key in self._protected or key in self._probation

    def get(self, key: K) -> V | None:
        protected = self._protected
        value = protected.get(key)
        if value is not None:
            protected.move_to_end(key)
            return value
        value = self._probation.pop(key, None)
        if value is None:
            return None
        if not self.capacity:
            self._probation[key] = value
            return value
        protected[key] = value
        if len(protected) > self.protected_capacity:
            old_key, old_value = protected.popitem(last=False)
            self._probation[old_key] = old_value
        return value

    def peek(self, key: K) -> V | None:
        """The value without counting a use."""
        value = self._protected.get(key)
        return value if value is not None else self._probation.get(key)

    def put(self, key: K, value: V) -> None:
        if key in self._protected:
            self._protected[key] = value
            self._protected.move_to_end(key)
            return
        self._probation[key] = value
        self._probation.move_to_end(key)
        if self.capacity and len(self) > self.capacity:
            victim = self._probation if self._probation else self._protected
            victim.popitem(last=False)

    def pop(self, key: K) -> V | None:
        value = self._protected.pop(key, None)
        return value if value is not None else self._probation.pop(key, None)


class InMemoryCache:
    """Blob descriptors in this process, with distribution's scoped semantics.

    Global entries map a digest to its descriptor (media type first-write-wins).
    Repository entries record that a repository holds a digest, with the
    repository's own media type (last write wins), and always set the global entry.
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self._entries: SegmentedLRU[str | tuple[str, str], Descriptor | str] = SegmentedLRU(capacity)
        self._media_types: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._entries)

    async def stat(self, digest: str, repository: str = "") -> Descriptor:
        check_key(digest, repository)
        entries = self._entries
        if repository:
            media_type = entries.get((repository, digest))
            if media_type is None:
                raise BlobUnknownError(f"blob {digest} unknown in {repository}")
            desc = entries.get(digest)
            if not isinstance(desc, Descriptor):
                raise BlobUnknownError(f"blob {digest} unknown in {repository}")
            if media_type and media_type != desc.media_type:
                return Descriptor(str(media_type), desc.digest, desc.size)
            return desc
        desc = entries.get(digest)
        if not isinstance(desc, Descriptor):
            raise BlobUnknownError(f"blob {digest} unknown")
        return desc

    async def set_descriptor(self, digest: str, descriptor: Descriptor, repository: str = "") -> None:
        alias = check_set(digest, descriptor, repository)
        media_type = self._media_types.setdefault(descriptor.media_type, descriptor.media_type)
        for key in (digest, alias) if alias else (digest,):
            if repository:
                self._entries.put((repository, key), media_type)
            self._set_global(key, descriptor, media_type)

    def _set_global(self, key: str, descriptor: Descriptor, media_type: str) -> None:
        old = self._entries.peek(key)
        if isinstance(old, Descriptor):
            media_type = old.media_type  # first write wins
        self._entries.put(key, Descriptor(media_type, descriptor.digest, descriptor.size))

    async def clear(self, digest: str, repository: str = "") -> None:
        check_key(digest, repository)
        if repository:
            held = self._entries.pop((repository, digest)) is not None
            self._entries.pop(digest)
        else:
            held = self._entries.pop(digest) is not None
        if not held:
            raise BlobUnknownError(f"blob {digest} unknown" + (f" in {repository}" if repository else ""))

    async def close(self) -> None:
        return None
