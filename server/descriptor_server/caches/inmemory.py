"""The ``inmemory`` cache: bounded, scan-resistant, compact; global and repository scopes.

Layout (about 150 bytes per global entry at 1,000,000 entries, see
the Performance section of README.md):

- One dict maps a *key* to a packed int. A global key is the raw digest bytes
  (``bytes.fromhex`` of the hex part: 32, 48 or 64 bytes, so the length names the
  algorithm); a repository key is the digest bytes followed by a 4-byte repository
  id (36, 52 or 68 bytes). The int packs the size, an interned media-type index, an
  alias flag, the queue the entry is in and a 2-bit access counter.
- Eviction is S3-FIFO (Yang et al., SOSP 2023) without its ghost queue: a new
  entry enters a small FIFO (10% of capacity); an entry leaving it is dropped
  unless it was hit meanwhile, in which case it moves to the main FIFO, which
  evicts CLOCK-style (a hit entry gets another lap, its counter decremented). The
  FIFOs are deques of the key objects the dict already holds (8 bytes a slot), so
  there is no per-entry Python object beyond the key and its int. A one-off scan of
  never-repeated digests only churns the small FIFO: it cannot flush the working
  set, which is what distribution uses ARC for.
- A bounded memo of the ``Descriptor`` objects of saturated entries (hit at least
  three times, so no counter left to bump), keyed by the digest string as it
  arrived, lets a repeated hit skip hex decoding and object construction, and lets
  BatchStat find its hits with one C-level ``map``; any change to a digest's entries,
  or a lap that decrements an entry's counter, forgets its memo.

Capacity counts global and repository entries together; ``0`` means unbounded.

Clear is final by the generation rule of :mod:`descriptor_server.caches`, kept by a
:class:`~.generations.Generations` here: :meth:`InMemoryCache.fill` checks and writes
with no ``await`` in between, so the compare-and-set is atomic in this process.

Repository ids are counted references: each id records how many repository
entries use it, and is freed (its name forgotten, the id reused) with the last
one, by eviction or Clear. So memory follows the capacity, never the number of
repository names clients have sent.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from descriptor_client.descriptor import Descriptor
from descriptor_client.digest import is_valid_digest
from descriptor_client.errors import BlobUnknownError

from . import Taken
from .generations import MAX_RECORDS, Generations
from .validation import check_key, check_set

DEFAULT_CAPACITY = 10000
#: Seconds a Clear's fence stands when the caller does not say.
DEFAULT_FENCE_TTL = 600.0
SMALL_SHARE = 0.1
#: Recently hit descriptors kept as objects (bounded; cleared when full).
HOT_MAX = 8192
#: Media types interned as small ints; beyond this many, an entry keeps its own.
MAX_MEDIA_TYPES = 1 << 16

# Packed value bits: | size | media index (16) | alias (1) | in main (1) | freq (2) |
_FREQ = 0b11
_MAIN = 1 << 2
_ALIAS = 1 << 3
_MT_SHIFT = 4
_MT_MASK = MAX_MEDIA_TYPES - 1
_SIZE_SHIFT = _MT_SHIFT + 16
_PAYLOAD = ~(_FREQ | _MAIN)

_ALGORITHM_BY_LENGTH = {32: "sha256", 48: "sha384", 64: "sha512"}
_REPOSITORY_KEY_LENGTHS = frozenset(n + 4 for n in _ALGORITHM_BY_LENGTH)


def _key(digest: str) -> bytes:
    """The global key of a validated digest (all supported algorithms are 6 letters)."""
    return bytes.fromhex(digest[7:])


def _digest_of(key: bytes) -> str:
    """The digest string a (global or repository) key stands for."""
    if len(key) in _REPOSITORY_KEY_LENGTHS:
        key = key[:-4]
    return f"{_ALGORITHM_BY_LENGTH[len(key)]}:{key.hex()}"


class InMemoryCache:
    """Blob descriptors in this process, with distribution's scoped semantics.

    Global entries map a digest to its descriptor (media type first-write-wins).
    Repository entries record that a repository holds a digest, with the
    repository's own media type (last write wins), and always set the global entry.
    """

    def __init__(
        self, capacity: int = DEFAULT_CAPACITY, *, fence_ttl: float = DEFAULT_FENCE_TTL, max_records: int = MAX_RECORDS
    ) -> None:
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        #: The epoch and per-digest clear generations (Clear is final).
        self.generations = Generations(fence_ttl, max_records)
        self.capacity = capacity
        self.small_capacity = max(1, int(capacity * SMALL_SHARE)) if capacity else 0
        self._entries: dict[bytes, int] = {}
        self._small: deque[bytes] = deque()
        self._main: deque[bytes] = deque()
        self._n_small = 0
        self._n_main = 0
        # Index 0 means "this entry's media type is in _own_media_type" (table full).
        self._media_types: list[str] = [""]
        self._media_index: dict[str, int] = {}
        self._own_media_type: dict[bytes, str] = {}
        self._aliases: dict[bytes, str] = {}
        # The reverse: canonical digest -> the global keys of its aliases (a global Clear of
        # the canonical digest removes them: their answer is the cleared blob).
        self._aliased: dict[str, set[bytes]] = {}
        # Repository name -> 4-byte id; the id's name and its count of live entries.
        self._repo_ids: dict[str, bytes] = {}
        self._repo_names: dict[bytes, str] = {}
        self._repo_refs: dict[bytes, int] = {}
        self._free_ids: list[bytes] = []
        # Memoised answers of saturated entries: digest -> descriptor, per scope.
        self._hot: dict[str, Descriptor] = {}
        self._hot_repo: dict[str, dict[str, Descriptor]] = {}
        self._hot_repos_of: dict[str, list[str]] = {}
        self._hot_size = 0
        #: Entries dropped to stay within capacity, since start (the evictions metric).
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def holds(self, digest: str, repository: str = "") -> bool:
        """True if the entry for ``digest`` in this scope is cached (not counted as a use)."""
        if not is_valid_digest(digest):
            return False
        key = _key(digest)
        if repository:
            rid = self._repo_ids.get(repository)
            if rid is None:
                return False
            key += rid
        return key in self._entries

    # -- lookups -----------------------------------------------------------------

    async def stat(self, digest: str, repository: str = "") -> Descriptor:
        # A memoised answer implies a valid digest and repository: no checks needed.
        hot = self._hot_repo.get(repository) if repository else self._hot
        desc = hot.get(digest) if hot is not None else None
        if desc is not None:
            return desc
        check_key(digest, repository)
        desc = self._lookup(digest, repository, checked=True)
        if desc is None:
            raise BlobUnknownError.of(digest, repository)
        return desc

    def peek(self, digest: str, repository: str = "") -> Descriptor | None:
        """The memoised answer for ``digest`` in this scope, or None: what :meth:`stat`
        answers for it, found without a coroutine (the statter's Stat fast path).

        Only memoised entries (saturated: a :meth:`stat` of one changes nothing, no
        counter to bump), so a peek and a stat leave the cache the same. Synchronous, as
        every change to an entry forgets its memo at once: a peek after an invalidation
        returns never sees what it removed.
        """
        hot = self._hot_repo.get(repository) if repository else self._hot
        return hot.get(digest) if hot is not None else None

    async def stat_many(self, digests: Sequence[str], repository: str = "") -> list[Descriptor | None]:
        """Look up many digests in one scope; ``None`` where unknown.

        The repository must be valid; a digest that is not is reported unknown.
        Memoised hits are found by one C-level ``map`` over the batch.
        """
        hot = self._hot_repo.get(repository) if repository else self._hot
        found: list[Descriptor | None] = list(map(hot.get, digests)) if hot else [None] * len(digests)
        if not all(found):  # a Descriptor is always true; all() skips its Python __eq__
            lookup = self._lookup
            for i, desc in enumerate(found):
                if desc is None:
                    found[i] = lookup(digests[i], repository, checked=False)
        return found

    def _lookup(self, digest: str, repository: str, *, checked: bool) -> Descriptor | None:
        if repository:
            scoped = self._hot_repo.get(repository)
            desc = scoped.get(digest) if scoped is not None else None
        else:
            desc = self._hot.get(digest)
        if desc is not None:
            return desc
        if not checked and not is_valid_digest(digest):
            return None
        entries = self._entries
        gkey = _key(digest)
        rkey = b""
        rvalue = _FREQ
        if repository:
            rid = self._repo_ids.get(repository)
            if rid is None:
                return None
            rkey = gkey + rid
            found = entries.get(rkey)
            if found is None:
                return None
            rvalue = found
        value = entries.get(gkey)
        if value is None:
            return None
        if value & _FREQ != _FREQ:
            value += 1
            entries[gkey] = value
        media_type = self._media_type(gkey, value)
        if rkey:
            if rvalue & _FREQ != _FREQ:
                rvalue += 1
                entries[rkey] = rvalue
            media_type = self._media_type(rkey, rvalue)
        canonical = self._aliases[gkey] if value & _ALIAS else digest
        desc = Descriptor(media_type, canonical, value >> _SIZE_SHIFT)
        if value & rvalue & _FREQ == _FREQ:
            self._memoise(digest, repository, desc)
        return desc

    def _memoise(self, digest: str, repository: str, desc: Descriptor) -> None:
        """Keep ``desc`` for repeated hits; only saturated entries (no counter to bump)."""
        if self._hot_size >= HOT_MAX:
            self._hot.clear()
            self._hot_repo.clear()
            self._hot_repos_of.clear()
            self._hot_size = 0
        self._hot_size += 1
        if not repository:
            self._hot[digest] = desc
            return
        scoped = self._hot_repo.get(repository)
        if scoped is None:
            scoped = self._hot_repo[repository] = {}
        scoped[digest] = desc
        self._hot_repos_of.setdefault(digest, []).append(repository)

    def _forget(self, digest: str) -> None:
        """Drop every memoised answer for ``digest`` (its entries changed)."""
        self._hot.pop(digest, None)
        repos = self._hot_repos_of.pop(digest, None)
        if repos:
            for repository in repos:
                scoped = self._hot_repo.get(repository)
                if scoped is not None:
                    scoped.pop(digest, None)

    def _media_type(self, key: bytes, value: int) -> str:
        index = (value >> _MT_SHIFT) & _MT_MASK
        return self._media_types[index] if index else self._own_media_type[key]

    def _media_bits(self, key: bytes, media_type: str) -> int:
        index = self._media_index.get(media_type)
        if index is None:
            if len(self._media_types) >= MAX_MEDIA_TYPES:
                self._own_media_type[key] = media_type
                return 0
            index = self._media_index[media_type] = len(self._media_types)
            self._media_types.append(media_type)
        self._own_media_type.pop(key, None)
        return index << _MT_SHIFT

    # -- writes ------------------------------------------------------------------

    async def token(self, fenced: Sequence[str] = ()) -> tuple[int, bool]:
        generations = self.generations
        return generations.epoch, bool(fenced) and generations.fenced(fenced)

    async def fill(self, digest: str, descriptor: Descriptor, repository: str, token: int) -> bool:
        """Write unless ``digest`` or ``descriptor.digest`` was invalidated after ``token``."""
        alias = check_set(digest, descriptor, repository)
        if not self.generations.allows((digest, descriptor.digest), token):
            return False
        self._set(digest, descriptor, repository, alias)  # no await since the check
        return True

    async def set_descriptor(self, digest: str, descriptor: Descriptor, repository: str = "") -> None:
        self._set(digest, descriptor, repository, check_set(digest, descriptor, repository))

    def _set(self, digest: str, descriptor: Descriptor, repository: str, alias: str | None) -> None:
        for key_digest in (digest, alias) if alias else (digest,):
            self._forget(key_digest)
            gkey = _key(key_digest)
            if repository:
                rid = self._repo_ids.get(repository)
                if rid is None:
                    rid = self._free_ids.pop() if self._free_ids else len(self._repo_ids).to_bytes(4, "big")
                    self._repo_ids[repository] = rid
                    self._repo_names[rid] = repository
                    self._repo_refs[rid] = 0
                rkey = gkey + rid
                if self._put(rkey, self._media_bits(rkey, descriptor.media_type)):
                    self._repo_refs[rid] += 1
            old = self._entries.get(gkey)
            # The global media type is first-write-wins.
            media = self._media_bits(gkey, descriptor.media_type) if old is None else old & (_MT_MASK << _MT_SHIFT)
            self._unalias(gkey)
            if descriptor.digest != key_digest:
                self._aliases[gkey] = descriptor.digest
                self._aliased.setdefault(descriptor.digest, set()).add(gkey)
                media |= _ALIAS
            self._put(gkey, media | (descriptor.size << _SIZE_SHIFT))
        self._evict()

    def _put(self, key: bytes, payload: int) -> bool:
        """Set an entry's payload; True if the entry is new."""
        entries = self._entries
        old = entries.get(key)
        if old is not None:  # keep its queue and counter
            entries[key] = (old & ~_PAYLOAD) | payload
            return False
        entries[key] = payload
        if self.capacity:
            self._small.append(key)
            self._n_small += 1
        return True

    def _dropped(self, key: bytes) -> None:
        """Forget what an entry just removed from ``_entries`` kept beside it."""
        self._unalias(key)
        self._own_media_type.pop(key, None)
        if len(key) in _REPOSITORY_KEY_LENGTHS:
            rid = key[-4:]
            left = self._repo_refs[rid] - 1
            if left:
                self._repo_refs[rid] = left
                return
            # The repository's last entry: free its id (reused by the next new name).
            del self._repo_refs[rid]
            name = self._repo_names.pop(rid)
            del self._repo_ids[name]
            self._hot_repo.pop(name, None)
            if self._repo_ids:
                self._free_ids.append(rid)
            else:  # nothing in use: start the ids again from 0
                self._free_ids.clear()

    def _unalias(self, gkey: bytes) -> None:
        canonical = self._aliases.pop(gkey, None)
        if canonical is not None:
            keys = self._aliased.get(canonical)
            if keys is not None:
                keys.discard(gkey)
                if not keys:
                    del self._aliased[canonical]

    def _remove(self, key: bytes) -> bool:
        value = self._entries.pop(key, None)
        if value is None:
            return False
        if self.capacity:
            if value & _MAIN:
                self._n_main -= 1
            else:
                self._n_small -= 1
            self._compact()
        self._dropped(key)
        return True

    def _evict(self) -> None:
        """S3-FIFO: drop or promote from the small FIFO, or give main entries a lap."""
        capacity = self.capacity
        if not capacity:
            return
        entries = self._entries
        small, main = self._small, self._main
        while self._n_small + self._n_main > capacity:
            if self._n_small > self.small_capacity or not self._n_main:
                key = small.popleft()
                value = entries.get(key)
                if value is None or value & _MAIN:
                    continue  # stale: cleared, or already promoted
                self._n_small -= 1
                if value & _FREQ:  # hit while in the small FIFO: promoted, counter kept
                    entries[key] = value | _MAIN
                    main.append(key)
                    self._n_main += 1
                    continue
            else:
                key = main.popleft()
                value = entries.get(key)
                if value is None or not value & _MAIN:
                    continue  # stale
                if value & _FREQ:  # another lap; no longer saturated, so not memoised
                    entries[key] = value - 1
                    main.append(key)
                    if value & _FREQ == _FREQ and self._hot_size:
                        self._forget(_digest_of(key))
                    continue
                self._n_main -= 1
            del entries[key]
            self.evictions += 1
            self._dropped(key)
            if self._hot_size:
                self._forget(_digest_of(key))

    def _compact(self) -> None:
        """Drop stale FIFO slots left by removals once they outnumber live entries."""
        live = self._n_small + self._n_main
        if len(self._small) + len(self._main) <= 2 * live + 1024:
            return
        entries = self._entries
        seen: set[bytes] = set()
        for name, in_main in (("_small", 0), ("_main", _MAIN)):
            kept: deque[bytes] = deque()
            for key in getattr(self, name):
                value = entries.get(key)
                if value is not None and value & _MAIN == in_main and key not in seen:
                    seen.add(key)
                    kept.append(key)
            setattr(self, name, kept)

    async def invalidate(self, digest: str, repository: str = "") -> tuple[bool, int]:
        check_key(digest, repository)
        epoch = self.generations.bump(digest)
        self._forget(digest)
        gkey = _key(digest)
        if repository:
            rid = self._repo_ids.get(repository)
            held = rid is not None and self._remove(gkey + rid)
            self._remove(gkey)
        else:
            held = self._remove(gkey)
            # Every alias whose answer is this blob goes too (Clear is final through an alias).
            for alias in list(self._aliased.pop(digest, ())):
                self._forget(_digest_of(alias))
                self._remove(alias)
        return held, epoch

    async def clear(self, digest: str, repository: str = "") -> None:
        held, _ = await self.invalidate(digest, repository)
        if not held:
            raise BlobUnknownError.of(digest, repository)

    async def restore(self, digest: str, taken: Taken, epoch: int) -> bool:
        """Put back what the invalidation at ``epoch`` took, unless ``digest`` was
        invalidated or written since."""
        check_key(digest, "")
        if self.generations.cleared(digest) != epoch or _key(digest) in self._entries:
            return False
        for desc, scope in taken:
            self._set(digest, desc, scope, None)  # the key digest only, as the Clear took it
        return True

    async def settle(self, digest: str) -> None:
        return None  # no near cache: once invalidated, nothing in this process answers it

    async def close(self) -> None:
        return None
