"""The ``redis`` cache: distribution's Redis layout (:mod:`.keys`), shared with registries and replicas.

On a single server or Sentinel the invalidation (bump, fence, removal), the
compare-and-set write-back (:meth:`RedisCache.fill`) and the restore of a refused Clear
are each one Lua script (:mod:`.scripts`), so atomic. On Cluster, where the keys live in
different slots, an invalidation sets the fence, then removes; a write-back checks the
fences, writes, checks again and takes back what it wrote if a Clear's fence appeared
meanwhile.

Every call to Redis is bounded as a whole (Stat by ``readtimeout``, SetDescriptor and
Clear by ``writetimeout``), is never retried, and after a connection failure or timeout
the cache fails fast for ``RETRY_AFTER`` seconds before one call probes Redis again, so
a stopped or hung Redis costs callers at most one timeout per probe. Failures raise
:class:`RedisCacheError`; the statter counts and logs them and answers from the backend.

In front of Redis sits a near cache (``redis.nearcache.size``, :mod:`.near`) kept
coherent by Redis client-side caching; it is off on Cluster. :meth:`RedisCache.settle`
(the end of every Clear) returns once no near cache of any process can answer what was
invalidated (:mod:`.nearlease`; also with this process's near cache off).

The client, its pools and the near cache are built from the ``redis:`` section by
:func:`.connection.from_config`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from descriptor_client.descriptor import OCTET_STREAM, Descriptor
from descriptor_client.digest import validate_digest
from descriptor_client.errors import BackendUnavailableError, BlobUnknownError, DescriptorError
from redis.asyncio import Redis, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ...core.cache import Taken
from ...core.logutil import describe
from ..validation import check_key, check_set
from . import scripts
from .keys import (
    EPOCH_KEY,
    SINCE_KEY,
    aliases_key,
    blob_key,
    fence_key,
    repository_blob_key,
    repository_set_key,
)
from .near import NearCache, NearStats
from .nearlease import Settler

T = TypeVar("T")

#: Seconds the cache fails fast after Redis was unreachable or timed out.
RETRY_AFTER = 1.0
#: Seconds a fence stands when the caller does not say (longer than a backend read may take).
DEFAULT_FENCE_TTL = 600.0

Observer = Callable[[str, float], None]
Closer = Callable[[], Awaitable[None]]
Client = Redis | RedisCluster


class RedisCacheError(BackendUnavailableError):
    """Redis could not answer (unreachable, timed out, or failing)."""


def _descriptor(reply: Sequence[Any]) -> Descriptor | None:
    """A descriptor from ``HMGET blobs::<d> digest size mediatype``, or None if unknown.

    As distribution does, a hash without ``digest`` or ``size`` is unknown (a miss that
    the backend repairs); a missing media type reads as ``application/octet-stream``.
    Malformed values (a size that is not a decimal >= 0, an invalid digest) are
    treated as unknown too, so the statter overwrites them from the backend.
    """
    digest, size, media_type = reply
    if not digest or size is None:
        return None
    try:
        n = int(size)
        validate_digest(digest)
    except (ValueError, DescriptorError):
        return None
    if n < 0:
        return None
    return Descriptor(media_type or OCTET_STREAM, digest, n)


def _scoped(member: Any, reply: Sequence[Any], media_type: Any) -> Descriptor | None:
    """A repository-scoped answer: membership, global hash, per-repository media type.

    As distribution's repository Stat: not a member, or no ``mediatype`` in
    ``repository::<r>::blobs::<d>`` (that hash evicted under ``allkeys-lru``, say), is
    unknown; an empty per-repository media type means the global one.
    """
    if not member or media_type is None:
        return None
    desc = _descriptor(reply)
    if desc is None:
        return None
    if media_type and media_type != desc.media_type:
        return Descriptor(media_type, desc.digest, desc.size)
    return desc


class RedisCache:
    """Blob descriptors in Redis with the in-memory cache's semantics and distribution's keys."""

    def __init__(
        self,
        client: Client,
        *,
        cluster: bool = False,
        read_timeout: float = 0.5,
        write_timeout: float = 0.5,
        pool_size: int = 32,
        retry_after: float = RETRY_AFTER,
        observe: Observer | None = None,
        closers: Sequence[Closer] = (),
        near: NearCache | None = None,
        fence_ttl: float = DEFAULT_FENCE_TTL,
        settler: Settler | None = None,
    ) -> None:
        self.client = client
        #: Milliseconds a Clear's fence stands (at least 1 s).
        self.fence_ms = max(1000, int(fence_ttl * 1000))
        self.cluster = cluster
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self.retry_after = retry_after
        self.observe = observe
        self._slots = asyncio.Semaphore(pool_size)
        self._global_script = client.register_script(scripts.GLOBAL_STAT_MANY)
        self._scoped_script = client.register_script(scripts.SCOPED_STAT_MANY)
        self._fill_script = client.register_script(scripts.FILL)
        self._token_script = client.register_script(scripts.TOKEN)
        self._invalidate_script = client.register_script(scripts.INVALIDATE)
        self._bump_script = client.register_script(scripts.BUMP)
        self._restore_script = client.register_script(scripts.RESTORE)
        self._closers = tuple(closers)
        self._down = False
        self._retry_at = 0.0
        #: The near cache in front of Redis, or None (off, or Cluster).
        self.near = near
        #: The barrier of Clears against every process's near cache (None on Cluster).
        self.settler = settler
        if near is not None:
            near.settler = settler

    def near_stats(self) -> NearStats | None:
        """The near cache's counters (None when it is off), for a collector at scrape time."""
        return self.near.stats() if self.near is not None else None

    @property
    def up(self) -> bool:
        """False from a failed Redis round trip until the next one succeeds (the up gauge)."""
        return not self._down

    # -- the one path every Redis round trip takes ----------------------------------

    async def _run(self, operation: str, budget: float, call: Callable[[], Awaitable[T]], *, gate: bool = True) -> T:
        if gate and self._down:
            now = time.monotonic()
            if now < self._retry_at:
                raise RedisCacheError("redis unavailable (waiting before the next attempt)")
            self._retry_at = now + self.retry_after  # this call probes; the others keep failing fast
        acquired = False
        try:
            async with asyncio.timeout(budget):
                async with self._slots:
                    acquired = True
                    start = time.perf_counter()
                    result = await call()
                    if self.observe is not None:
                        self.observe(operation, time.perf_counter() - start)
        except (TimeoutError, RedisTimeoutError, RedisConnectionError, OSError) as err:
            if acquired:  # a wait for a free connection is not Redis failing
                self._down = True
                self._retry_at = time.monotonic() + self.retry_after
            raise RedisCacheError(f"redis {operation} failed: {_describe(err, budget)}") from err
        except RedisError as err:
            raise RedisCacheError(f"redis {operation} failed: {_describe(err, budget)}") from err
        self._down = False
        return result

    def _pipeline(self, *, atomic: bool) -> Any:
        # Cluster: the keys of one call live in different slots, so no MULTI; the
        # pipeline sends each node its commands in one round trip.
        return self.client.pipeline(transaction=atomic and not self.cluster)

    # -- Stat -------------------------------------------------------------------------

    async def stat(self, digest: str, repository: str = "") -> Descriptor:
        near = self.near
        seq = -1
        if near is not None:
            if near.live:
                held = await near.get(digest, repository)
                if held is not None:
                    return held
                seq = near.seq  # taken before the read is sent (see nearcache)
            else:
                near.start()
        check_key(digest, repository)
        if repository:
            descs, media_types = await self._stat_replies([digest], repository)
            desc = descs[0]
            if near is not None and desc is not None:
                await near.put(seq, digest, repository, desc, media_types[0])
        else:
            reply = await self._run("stat", self.read_timeout, lambda: self._hmget(digest))
            desc = _descriptor(reply)
            if near is not None and desc is not None:
                await near.put(seq, digest, "", desc)
        if desc is None:
            raise BlobUnknownError.of(digest, repository)
        return desc

    async def _hmget(self, digest: str) -> Any:
        return await self.client.hmget(blob_key(digest), ["digest", "size", "mediatype"])

    async def stat_many(self, digests: Sequence[str], repository: str = "") -> list[Descriptor | None]:
        """Stat already validated ``digests`` in one round trip; None for unknown ones.

        On a single server or Sentinel the whole batch is one read-only Lua script
        (one command and one reply to parse instead of a pipeline of one command per
        digest, several times faster in redis-py); on Cluster, where the keys live in
        different slots, a pipeline.
        """
        if not digests:
            return []
        near = self.near
        if near is None:
            return (await self._read_many(digests, repository))[0]
        if not near.live:
            near.start()
            return (await self._read_many(digests, repository))[0]
        found = await near.get_many(digests, repository)
        if all(found):  # a Descriptor is always true
            return found
        seq = near.seq
        missing = [i for i, d in enumerate(found) if d is None]
        wanted = [digests[i] for i in missing]
        descs, media_types = await self._read_many(wanted, repository)
        for i, desc in zip(missing, descs, strict=True):
            found[i] = desc
        await near.put_many(seq, wanted, repository, descs, media_types)
        return found

    async def _read_many(self, digests: Sequence[str], repository: str) -> tuple[list[Descriptor | None], list[Any]]:
        """Answers from Redis, and (repository scope) the per-repository media types read."""
        if self.cluster:
            return await self._stat_replies(digests, repository, operation="stat_many")
        if not repository:
            keys = [blob_key(d) for d in digests]
            replies = await self._run("stat_many", self.read_timeout, lambda: self._global_script(keys=keys))
            return [_descriptor(r) for r in replies], []
        keys = [repository_set_key(repository)]
        for d in digests:
            keys += (blob_key(d), repository_blob_key(repository, d))
        replies = await self._run(
            "stat_many", self.read_timeout, lambda: self._scoped_script(keys=keys, args=list(digests))
        )
        return [_scoped(r[0], r[1:4], r[4]) for r in replies], [r[4] for r in replies]

    async def _stat_replies(
        self, digests: Sequence[str], repository: str, operation: str = "stat"
    ) -> tuple[list[Descriptor | None], list[Any]]:
        async def call() -> list[Any]:
            pipe = self._pipeline(atomic=False)
            for digest in digests:
                if repository:
                    pipe.sismember(repository_set_key(repository), digest)
                pipe.hmget(blob_key(digest), ["digest", "size", "mediatype"])
                if repository:
                    pipe.hget(repository_blob_key(repository, digest), "mediatype")
            replies: list[Any] = await pipe.execute()
            return replies

        replies = await self._run(operation, self.read_timeout, call)
        if not repository:
            return [_descriptor(r) for r in replies], []
        triples = [replies[i : i + 3] for i in range(0, len(replies), 3)]
        return [_scoped(*t) for t in triples], [t[2] for t in triples]

    # -- SetDescriptor ----------------------------------------------------------------

    async def set_descriptor(self, digest: str, descriptor: Descriptor, repository: str = "") -> None:
        alias = check_set(digest, descriptor, repository)
        keys = (digest, alias) if alias else (digest,)
        fields = {"digest": descriptor.digest, "size": str(descriptor.size)}

        async def call() -> None:
            pipe = self._pipeline(atomic=True)
            for key in keys:
                if repository:
                    pipe.sadd(repository_set_key(repository), key)
                pipe.hset(blob_key(key), mapping=fields)
                pipe.hsetnx(blob_key(key), "mediatype", descriptor.media_type)  # first write wins
                if repository:
                    pipe.hset(repository_blob_key(repository, key), "mediatype", descriptor.media_type)
            if alias:  # a global Clear of the canonical digest removes its aliases too
                pipe.sadd(aliases_key(alias), digest)
            await pipe.execute()

        try:
            await self._run("set_descriptor", self.write_timeout, call)
        finally:
            # Once Redis has answered (or failed: its state is then unknown), before returning.
            if self.near is not None:
                await self.near.forget(keys, repository)

    # -- the generation rule -----------------------------------------------------------

    async def token(self, fenced: Sequence[str] = ()) -> tuple[int, bool]:
        """The epoch, and whether any of ``fenced`` is fenced: one round trip."""
        if self.cluster:
            if not fenced:
                value = await self._run("token", self.read_timeout, lambda: self.client.get(EPOCH_KEY))
                return int(value or 0), False

            async def call() -> list[Any]:
                pipe = self._pipeline(atomic=False)
                pipe.get(EPOCH_KEY)
                for digest in fenced:
                    pipe.exists(fence_key(digest))
                replies: list[Any] = await pipe.execute()
                return replies

            replies = await self._run("token", self.read_timeout, call)
            return int(replies[0] or 0), any(replies[1:])
        keys = [EPOCH_KEY, SINCE_KEY, *(fence_key(d) for d in fenced)]
        epoch, is_fenced = await self._run("token", self.read_timeout, lambda: self._token_script(keys=keys))
        return int(epoch), bool(is_fenced)

    async def fill(self, digest: str, descriptor: Descriptor, repository: str, token: int) -> bool:
        """Write as set_descriptor, only if no fence of the digests written is newer than ``token``."""
        alias = check_set(digest, descriptor, repository)
        keys = (digest, alias) if alias else (digest,)
        if self.cluster:
            return await self._fill_cluster(digest, descriptor, repository, keys, token)
        script_keys = [SINCE_KEY, *(fence_key(k) for k in keys)]
        for key in keys:
            script_keys.append(blob_key(key))
            if repository:
                script_keys.append(repository_blob_key(repository, key))
        if repository:
            script_keys.append(repository_set_key(repository))
        if alias:
            script_keys.append(aliases_key(alias))
        args = [
            len(keys),
            1 if repository else 0,
            descriptor.digest,
            descriptor.size,
            descriptor.media_type,
            token,
            *keys,
        ]
        try:
            written = await self._run(
                "fill", self.write_timeout, lambda: self._fill_script(keys=script_keys, args=args)
            )
        finally:
            if self.near is not None:
                await self.near.forget(keys, repository)
        return bool(written)

    async def _newer_fence(self, keys: Sequence[str], token: int) -> bool:
        """Cluster: whether any of ``keys`` was invalidated after ``token`` (one round trip)."""

        async def call() -> list[Any]:
            pipe = self._pipeline(atomic=False)
            for key in keys:
                pipe.get(fence_key(key))
            replies: list[Any] = await pipe.execute()
            return replies

        replies = await self._run("fill", self.read_timeout, call)
        return any(r is not None and int(r) > token for r in replies)

    async def _fill_cluster(
        self, digest: str, descriptor: Descriptor, repository: str, keys: Sequence[str], token: int
    ) -> bool:
        """Cluster: the fences live in other slots than the keys, so no script can check
        and write at once. Check, write, and check again: a Clear that landed between the
        first check and the write has left its fence, and what was written is taken back."""
        if await self._newer_fence(keys, token):
            return False
        await self.set_descriptor(digest, descriptor, repository)
        if not await self._newer_fence(keys, token):
            return True

        async def take_back() -> None:
            pipe = self._pipeline(atomic=False)
            for key in keys:
                _queue_removal(pipe, key, repository)
            await pipe.execute()

        try:
            await self._run("fill", self.write_timeout, take_back, gate=False)
        finally:
            if self.near is not None:
                await self.near.forget(keys, repository)
        return False

    async def invalidate(self, digest: str, repository: str = "") -> tuple[bool, int]:
        """Bump the epoch, fence ``digest`` at it, remove the scope's entries.

        A repository scope removes the membership, the per-repository media type and
        the global hash. One Lua script on a single server or Sentinel; on Cluster the
        bump, then the fence, then the removal (so a write-back's second check sees the
        fence before anything it could write is removed). Never skipped by the
        fail-fast window: a stale entry left behind would outlive the deletion.
        """
        check_key(digest, repository)
        removal = [repository_set_key(repository), repository_blob_key(repository, digest)] if repository else []
        removal.append(blob_key(digest))
        if not repository:
            removal.append(aliases_key(digest))
        try:
            if self.cluster:
                epoch = await self._run(
                    "clear", self.write_timeout, lambda: self._bump_script(keys=[EPOCH_KEY]), gate=False
                )
                await self._run(
                    "clear",
                    self.write_timeout,
                    lambda: self.client.set(fence_key(digest), epoch, px=self.fence_ms),
                    gate=False,
                )

                async def remove() -> list[Any]:
                    pipe = self._pipeline(atomic=False)
                    _queue_removal(pipe, digest, repository)
                    replies: list[Any] = await pipe.execute()
                    return replies

                held = (await self._run("clear", self.write_timeout, remove, gate=False))[0]
                if not repository:
                    await self._run("clear", self.write_timeout, lambda: self._remove_aliases(digest), gate=False)
            else:
                keys = [EPOCH_KEY, fence_key(digest), *removal]
                args = [self.fence_ms, 1 if repository else 0, digest]
                held, epoch = await self._run(
                    "clear",
                    self.write_timeout,
                    lambda: self._invalidate_script(keys=keys, args=args),
                    gate=False,
                )
        finally:
            # Clear is final: no held answer, and no read that began before, survives it.
            if self.near is not None:
                await self.near.forget((digest,), repository)
        return bool(held), int(epoch)

    async def _remove_aliases(self, digest: str) -> None:
        """Cluster: remove the global entries of the aliases whose answer is ``digest``."""
        aliases = await self.client.smembers(aliases_key(digest))
        pipe = self._pipeline(atomic=False)
        for alias in aliases:
            pipe.delete(blob_key(alias if isinstance(alias, str) else alias.decode()))
        pipe.delete(aliases_key(digest))
        await pipe.execute()

    async def lists(self, digest: str, repository: str) -> bool:
        """Whether the repository's membership set lists ``digest`` (even without the
        hashes a Stat needs, as distribution 2.8's Clear leaves it)."""
        check_key(digest, repository)
        return bool(
            await self._run(
                "stat", self.read_timeout, lambda: self.client.sismember(repository_set_key(repository), digest)
            )
        )

    async def clear(self, digest: str, repository: str = "") -> None:
        """:meth:`invalidate`; BlobUnknownError if the scope did not hold ``digest``."""
        held, _ = await self.invalidate(digest, repository)
        if not held:
            raise BlobUnknownError.of(digest, repository)

    async def restore(self, digest: str, taken: Taken, epoch: int) -> bool:
        """Put back what the invalidation at ``epoch`` took, if ``digest`` was neither
        invalidated nor written since (one script; on Cluster, check then write)."""
        check_key(digest, "")
        if not taken or taken[0][1]:
            return False  # nothing global taken: nothing a Stat could have answered
        glob = taken[0][0]
        scoped = [(desc, scope) for desc, scope in taken[1:]]
        try:
            if self.cluster:

                async def check() -> list[Any]:
                    pipe = self._pipeline(atomic=False)
                    pipe.get(fence_key(digest))
                    pipe.exists(blob_key(digest))
                    replies: list[Any] = await pipe.execute()
                    return replies

                fence, exists = await self._run("restore", self.read_timeout, check)
                if fence is None or int(fence) != epoch or exists:
                    return False

                async def write() -> None:
                    pipe = self._pipeline(atomic=False)
                    pipe.hset(
                        blob_key(digest),
                        mapping={"digest": glob.digest, "size": str(glob.size), "mediatype": glob.media_type},
                    )
                    for desc, scope in scoped:
                        pipe.sadd(repository_set_key(scope), digest)
                        pipe.hset(repository_blob_key(scope, digest), "mediatype", desc.media_type)
                    await pipe.execute()

                await self._run("restore", self.write_timeout, write)
                return True
            keys = [fence_key(digest), blob_key(digest)]
            for _, scope in scoped:
                keys += (repository_set_key(scope), repository_blob_key(scope, digest))
            args: list[str | int] = [
                str(epoch),
                digest,
                glob.digest,
                glob.size,
                glob.media_type,
                *(d.media_type for d, _ in scoped),
            ]
            restored = await self._run(
                "restore", self.write_timeout, lambda: self._restore_script(keys=keys, args=args)
            )
            return bool(restored)
        finally:
            if self.near is not None:
                await self.near.forget((digest,), scoped[0][1] if scoped else "")

    async def settle(self, digest: str) -> None:
        """Return once no near cache of any process sharing this Redis can answer what was
        invalidated before this call (``digest``: the Clear's, for logs); see :mod:`.nearlease`."""
        if self.settler is not None:
            await self.settler.settle(digest)

    async def close(self) -> None:
        if self.settler is not None:
            await self.settler.close()
        if self.near is not None:
            await self.near.close()
        await self.client.aclose()
        for closer in self._closers:
            await closer()


def _queue_removal(pipe: Any, digest: str, repository: str) -> None:
    """Queue what a Clear of ``digest`` in this scope removes: in a repository, its
    membership and media type; in every scope, the global hash (first reply: whether
    the scope held it)."""
    if repository:
        pipe.srem(repository_set_key(repository), digest)
        pipe.delete(repository_blob_key(repository, digest))
    pipe.delete(blob_key(digest))


def _describe(err: BaseException, budget: float) -> str:
    if isinstance(err, TimeoutError) and not str(err):
        return f"no answer within {budget:g}s"
    return describe(err)
