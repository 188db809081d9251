"""The Redis cache's near cache: answers kept in this process, kept coherent by Redis.

What it holds: the hits Redis answered, in two :class:`~.inmemory.InMemoryCache`
tables (the in-memory cache's compact layout and S3-FIFO eviction, by composition):
global answers, and repository answers under a per-repository alias (``r<n>``), so
that a change to a repository's set can retire all of that repository's answers at
once by dropping its alias. Answers whose canonical digest differs from the key
(aliases across algorithms) and repository answers whose per-repository media type
is empty (they depend on the global media type) are never held; they always go to
Redis.

How it stays coherent: Redis client-side caching in broadcast mode. One dedicated
RESP2 connection runs ``CLIENT TRACKING on REDIRECT <its own id> BCAST PREFIX blobs::
PREFIX repository::`` and ``SUBSCRIBE __redis__:invalidate``. In broadcast mode the
server sends an invalidation for every modified key (written, deleted, evicted,
expired) matching a prefix, whichever connection read it, so tracking on this one
connection covers the reads made on every pooled connection. Each invalidated key
evicts what depends on it:

- ``blobs::<d>``: ``<d>`` in every scope;
- ``repository::<r>::blobs::<d>``: ``<d>`` in ``<r>``;
- ``repository::<r>::blobs`` (the set): every answer in ``<r>``;
- a flush (``FLUSHALL``/``FLUSHDB``): everything.

Races: every read from Redis takes the invalidation sequence number before it is
sent, and its answer is held only if no invalidation of the same digest (a striped
table of :data:`SLOTS` counters), no repository-set invalidation and no flush was
processed since. Our own SetDescriptor and Clear evict and bump the sequence when
Redis has answered, before they return, so no read that began earlier can bring the
old answer back.

When the connection drops (``CLIENT KILL``, a restart, a failover, no answer to a
``PING`` within :data:`PING_INTERVAL`, or Sentinel naming another master): the near
cache is flushed and bypassed until tracking is set up again, with backoff; one log
line on loss and one on recovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from descriptor_client.descriptor import Descriptor
from descriptor_client.errors import BlobUnknownError, DescriptorError
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..core import loggers
from ..core.logutil import describe
from .inmemory import InMemoryCache

log = logging.getLogger(loggers.NEAR_CACHE)

CHANNEL = "__redis__:invalidate"
#: The invalidation connection's name (``CLIENT LIST``, ``CLIENT KILL``).
CLIENT_NAME = "descriptor-service-nearcache"
PREFIXES = ("blobs::", "repository::")
#: Default ``redis.nearcache.size``.
DEFAULT_SIZE = 10000
#: Striped per-digest invalidation counters (a power of two).
SLOTS = 4096
_MASK = SLOTS - 1
#: Seconds between PINGs on an idle invalidation connection; no answer within as long is a loss.
PING_INTERVAL = 1.0
#: Reconnect backoff, seconds.
BACKOFF_MIN = 0.05
BACKOFF_MAX = 5.0

_BLOB = "blobs::"
_REPO = "repository::"
_SET_SUFFIX = "::blobs"
_HASH_SEP = "::blobs::"

MasterAddress = Callable[[], Awaitable[Any]]


@dataclass(frozen=True)
class NearStats:
    """Counters of one near cache, read at scrape time."""

    size: int
    entries: int
    live: bool
    hits: int
    invalidations: int
    flushes: int
    losses: int
    setups: int


class NearCache:
    """Answers held in this process in front of Redis; see the module documentation.

    ``pool`` is a redis-py asyncio connection pool for the invalidation connection
    (RESP2, one connection, to the master); ``master_address``, on Sentinel, names the
    current master so that a failover the connection survived is still noticed.
    """

    def __init__(
        self,
        size: int,
        pool: Any,
        *,
        master_address: MasterAddress | None = None,
        ping_interval: float = PING_INTERVAL,
        setup_timeout: float = 1.0,
    ) -> None:
        if size <= 0:
            raise ValueError("size must be > 0")
        self.size = size
        self.pool = pool
        self.master_address = master_address
        self.ping_interval = ping_interval
        self.setup_timeout = setup_timeout
        #: True while tracking is set up: only then are answers held or served.
        self.live = False
        #: The invalidation sequence number; a read takes it before it is sent.
        self.seq = 0
        self._slot_seen = [0] * SLOTS
        self._all_seen = 0
        self.hits = 0
        self.invalidations = 0
        self.flushes = 0
        self.losses = 0
        self.setups = 0
        self._max_aliases = max(1024, size)
        self._new_tables()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def _new_tables(self) -> None:
        self._global = InMemoryCache(self.size)
        # A repository answer takes two entries there (the repository's and the digest's).
        self._scoped = InMemoryCache(2 * self.size)
        self._aliases: dict[str, str] = {}
        self._issued = 0

    def __len__(self) -> int:
        return len(self._global) + len(self._scoped)

    def stats(self) -> NearStats:
        return NearStats(
            self.size, len(self), self.live, self.hits, self.invalidations, self.flushes, self.losses, self.setups
        )

    # -- lookups ------------------------------------------------------------------------

    async def get(self, digest: str, repository: str) -> Descriptor | None:
        """The held answer, or None. An invalid digest raises as the Redis cache would."""
        try:
            if repository:
                alias = self._aliases.get(repository)
                if alias is None:
                    return None
                desc = await self._scoped.stat(digest, alias)
            else:
                desc = await self._global.stat(digest)
        except BlobUnknownError:
            return None
        self.hits += 1
        return desc

    async def get_many(self, digests: Sequence[str], repository: str) -> list[Descriptor | None]:
        if repository:
            alias = self._aliases.get(repository)
            if alias is None:
                return [None] * len(digests)
            found = await self._scoped.stat_many(digests, alias)
        else:
            found = await self._global.stat_many(digests)
        if all(found):  # a Descriptor is always true
            self.hits += len(found)
        else:
            self.hits += sum(1 for d in found if d is not None)
        return found

    # -- filling ------------------------------------------------------------------------

    def _fresh(self, seq: int, digest: str) -> bool:
        """True if no invalidation that concerns ``digest`` was processed after ``seq``."""
        return self.live and self._all_seen <= seq and self._slot_seen[hash(digest) & _MASK] <= seq

    async def put_many(
        self,
        seq: int,
        digests: Sequence[str],
        repository: str,
        answers: Sequence[Descriptor | None],
        media_types: Sequence[Any] = (),
    ) -> None:
        """Hold the answers of a read that took ``seq`` before it was sent, if still fresh.

        ``media_types`` are the per-repository media types Redis returned (repository
        answers only): an answer with an empty one is not held.
        """
        if seq < 0 or not self.live or self._all_seen > seq:
            return
        alias = ""
        for i, desc in enumerate(answers):
            if desc is None:
                continue
            digest = digests[i]
            if desc.digest != digest or not self._fresh(seq, digest):
                continue
            if repository:
                if not media_types[i]:
                    continue
                if not alias:
                    alias = self._alias(repository)
                    if not alias:
                        return
                await self._scoped.set_descriptor(digest, desc, alias)
            else:
                # Replace, not merge: the in-memory cache's global media type is first-write-wins,
                # and two reads that raced a change may land in either order.
                with contextlib.suppress(BlobUnknownError):
                    await self._global.clear(digest)
                await self._global.set_descriptor(digest, desc)

    async def put(
        self, seq: int, digest: str, repository: str, desc: Descriptor | None, media_type: Any = None
    ) -> None:
        await self.put_many(seq, (digest,), repository, (desc,), (media_type,))

    def _alias(self, repository: str) -> str:
        alias = self._aliases.get(repository)
        if alias is not None:
            return alias
        if self._issued >= self._max_aliases:
            # Retired aliases keep inner repository ids: start over to bound memory.
            self._flush()
            return ""
        alias = self._aliases[repository] = f"r{self._issued}"
        self._issued += 1
        return alias

    # -- eviction -----------------------------------------------------------------------

    async def forget(self, digests: Iterable[str], repository: str = "") -> None:
        """Evict ``digests`` (in every scope) after our own write or Clear reached Redis."""
        for digest in digests:
            await self._drop_digest(digest)
            if repository:
                await self._drop_scoped(digest, repository)

    def _bump(self, digest: str) -> None:
        self.seq += 1
        self._slot_seen[hash(digest) & _MASK] = self.seq

    def _bump_all(self) -> None:
        self.seq += 1
        self._all_seen = self.seq

    async def _drop_digest(self, digest: str) -> None:
        self._bump(digest)
        for table in (self._global, self._scoped):
            with contextlib.suppress(DescriptorError):
                await table.clear(digest)

    async def _drop_scoped(self, digest: str, repository: str) -> None:
        self._bump(digest)
        alias = self._aliases.get(repository)
        if alias is not None:
            with contextlib.suppress(DescriptorError):
                await self._scoped.clear(digest, alias)

    def _drop_repository(self, repository: str) -> None:
        self._bump_all()
        self._aliases.pop(repository, None)

    def _flush(self) -> None:
        self._bump_all()
        self._new_tables()
        self.flushes += 1

    async def invalidate(self, keys: Sequence[str] | None) -> None:
        """Apply one ``__redis__:invalidate`` message (None: the server flushed)."""
        if keys is None:
            self.invalidations += 1
            self._flush()
            return
        for key in keys:
            self.invalidations += 1
            if key.startswith(_BLOB):
                await self._drop_digest(key[len(_BLOB) :])
            elif key.startswith(_REPO):
                rest = key[len(_REPO) :]
                if rest.endswith(_SET_SUFFIX):
                    self._drop_repository(rest[: -len(_SET_SUFFIX)])
                    continue
                repository, sep, digest = rest.partition(_HASH_SEP)
                if sep:
                    await self._drop_scoped(digest, repository)

    # -- the invalidation connection ----------------------------------------------------

    def start(self) -> None:
        """Set tracking up in the background (once; called from a running loop)."""
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="redis-nearcache")

    async def _run(self) -> None:
        delay = BACKOFF_MIN
        degraded = False  # a loss or failed setup was logged; log the recovery
        while not self._closed:
            try:
                conn = await self._setup()
            except Exception as err:  # retried with backoff, logged once
                if not degraded:
                    log.warning(
                        "redis near cache: cannot set up invalidation tracking (%s); "
                        "answering from Redis until it is set up",
                        describe(err),
                    )
                    degraded = True
                await asyncio.sleep(delay)
                delay = min(2 * delay, BACKOFF_MAX)
                continue
            self._flush()
            self.live = True
            self.setups += 1
            delay = BACKOFF_MIN
            if degraded:
                log.warning("redis near cache: invalidation tracking set up again; near cache in use")
                degraded = False
            reason = "connection closed"
            try:
                await self._listen(conn)
            except Exception as err:  # any failure is a loss, never a dead task
                reason = describe(err)
            finally:
                # Before anything else can run: nothing held may be answered any more.
                self.live = False
                self._flush()
                await self._release(conn)
            if self._closed:
                return
            self.losses += 1
            degraded = True
            log.warning(
                "redis near cache: invalidation connection lost (%s); flushed, answering from Redis "
                "until tracking is set up again",
                reason,
            )
            await asyncio.sleep(delay)

    async def _read(self, conn: Any, timeout: float) -> Any:
        reply = await conn.read_response(timeout=timeout)
        if reply is None:
            raise RedisTimeoutError(f"no answer within {timeout:g}s")
        return reply

    async def _setup(self) -> Any:
        async with asyncio.timeout(self.setup_timeout):
            conn = await self.pool.get_connection()
        try:
            await conn.send_command("CLIENT", "SETNAME", CLIENT_NAME)  # what CLIENT LIST shows operators
            await self._read(conn, self.setup_timeout)
            await conn.send_command("CLIENT", "ID")
            client_id = await self._read(conn, self.setup_timeout)
            prefixes = [part for prefix in PREFIXES for part in ("PREFIX", prefix)]
            await conn.send_command("CLIENT", "TRACKING", "on", "REDIRECT", client_id, "BCAST", *prefixes)
            await self._read(conn, self.setup_timeout)
            await conn.send_command("SUBSCRIBE", CHANNEL)
            reply = await self._read(conn, self.setup_timeout)
            if not isinstance(reply, list) or not reply or reply[0] != "subscribe":
                raise RedisError(f"unexpected reply to SUBSCRIBE: {reply!r}")
        except BaseException:
            await self._release(conn)
            raise
        return conn

    async def _listen(self, conn: Any) -> None:
        loop = asyncio.get_running_loop()
        interval = self.ping_interval
        next_ping = loop.time() + interval
        pong_due = math.inf
        while not self._closed:
            now = loop.time()
            if now > pong_due:
                raise RedisTimeoutError(f"no answer to PING within {interval:g}s")
            if now >= next_ping:
                next_ping = now + interval
                if pong_due == math.inf:
                    await conn.send_command("PING")
                    pong_due = now + interval
                await self._check_master(conn, interval)
            msg = await conn.read_response(timeout=max(0.001, min(next_ping, pong_due) - loop.time()))
            if msg is None:
                continue
            kind = msg[0] if isinstance(msg, list) and msg else None
            if kind == "pong":
                pong_due = math.inf
            elif kind == "message" and msg[1] == CHANNEL:
                await self.invalidate(msg[2])

    async def _check_master(self, conn: Any, budget: float) -> None:
        """On Sentinel: a connection to a server that is no longer the master is a loss."""
        if self.master_address is None:
            return
        try:
            async with asyncio.timeout(budget):
                address = await self.master_address()
        except (RedisError, OSError, TimeoutError):
            return  # sentinels unreachable: the connection itself still answers PING
        if tuple(address) != (conn.host, conn.port):
            raise RedisError(f"sentinel names another master ({address[0]}:{address[1]})")

    async def _release(self, conn: Any) -> None:
        with contextlib.suppress(Exception):
            await conn.disconnect()
        with contextlib.suppress(Exception):
            await self.pool.release(conn)

    async def close(self) -> None:
        self._closed = True
        self.live = False
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            await self.pool.disconnect()


class NearCacheCollector(Collector):
    """The near cache's counters as Prometheus families, read at scrape time."""

    def __init__(self, source: Callable[[], NearStats]) -> None:
        self.source = source

    def describe(self) -> Iterable[Metric]:
        return list(self.collect())

    def collect(self) -> Iterator[Metric]:
        s = self.source()
        for name, value, doc in (
            ("hits", s.hits, "Lookups the Redis cache answered from its near cache (also counted in hits)."),
            ("invalidations", s.invalidations, "Keys Redis reported changed (each evicts what depends on it)."),
            ("flushes", s.flushes, "Times the near cache was emptied (connection lost or set up, server flush)."),
            ("losses", s.losses, "Times the invalidation connection was lost."),
        ):
            yield CounterMetricFamily(f"descriptor_cache_near_{name}", doc, value=value)
        yield GaugeMetricFamily("descriptor_cache_near_entries", "Entries held in the near cache.", s.entries)
        yield GaugeMetricFamily(
            "descriptor_cache_near_live",
            "1 while invalidation tracking is set up (near cache in use).",
            float(s.live),
        )


__all__ = ["DEFAULT_SIZE", "NearCache", "NearCacheCollector", "NearStats"]
