"""The Redis cache's near cache: answers kept in this process, kept coherent by Redis.

What it holds: the hits Redis answered, in two :class:`~..inmemory.InMemoryCache`
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

Clear is final across processes (:mod:`.nearlease`): the near cache answers only while
it holds its lease in Redis (one ``time.monotonic()`` per lookup), and acks the
barriers other processes' Clears write (a third tracked prefix) once it has applied
every invalidation before them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from descriptor_client.descriptor import Descriptor
from descriptor_client.errors import BlobUnknownError, DescriptorError
from redis.asyncio import Redis
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ...core import loggers
from ...core.logutil import describe
from ..inmemory import InMemoryCache
from . import nearlease

#: Seconds closing waits for the near cache's tasks and its deregistration.
CLOSE_TIMEOUT = 5.0
log = logging.getLogger(loggers.NEAR_CACHE)

CHANNEL = "__redis__:invalidate"
#: The invalidation connection's name (``CLIENT LIST``, ``CLIENT KILL``).
CLIENT_NAME = "descriptor-service-nearcache"
PREFIXES = ("blobs::", "repository::", nearlease.BARRIER_PREFIX)
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
_BARRIER = nearlease.BARRIER_PREFIX
#: Barriers acked lately (their expiry is reported too, and needs no ack).
_ACKED_KEPT = 1024

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
    lapses: int = 0
    evicted: int = 0
    acks: int = 0
    settle: nearlease.SettleStats | None = None


class NearCache:
    """Answers held in this process in front of Redis; see the module documentation.

    ``pool`` is a redis-py asyncio connection pool (RESP2, to the master) of two
    connections: the invalidation connection, and one for the lease and the acks;
    ``master_address``, on Sentinel, names the current master so that a failover the
    connection survived is still noticed. ``lease``: seconds of the lease in Redis
    (``redis.nearcache.lease``).
    """

    def __init__(
        self,
        size: int,
        pool: Any,
        *,
        master_address: MasterAddress | None = None,
        ping_interval: float = PING_INTERVAL,
        setup_timeout: float = 1.0,
        lease: float = nearlease.DEFAULT_LEASE,
    ) -> None:
        if size <= 0:
            raise ValueError("size must be > 0")
        if lease <= 0:
            raise ValueError("lease must be > 0")
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
        #: The lease: held while ``time.monotonic()`` is below ``_lease_until``.
        self.lease = lease
        self.member = nearlease.new_id()
        self._pid = os.getpid()
        self._lease_until = 0.0
        self.lapses = 0
        self.evicted = 0
        self.acks = 0
        self._control: Any = None
        self._lease_script: Any = None
        self._ack_script: Any = None
        self._control_lock = asyncio.Lock()
        self._acks_due: list[tuple[str, str, str]] = []
        self._acked: OrderedDict[str, None] = OrderedDict()
        self._acker: asyncio.Task[None] | None = None
        #: The settler of this process's Clears (set by the Redis cache), for the metrics.
        self.settler: nearlease.Settler | None = None

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
            self.size,
            len(self),
            self.live,
            self.hits,
            self.invalidations,
            self.flushes,
            self.losses,
            self.setups,
            self.lapses,
            self.evicted,
            self.acks,
            self.settler.stats() if self.settler is not None else None,
        )

    # -- the lease ----------------------------------------------------------------------

    @property
    def leased(self) -> bool:
        """True while this process's lease is held by its own clock."""
        return time.monotonic() < self._lease_until

    def _lapse(self) -> None:
        """The lease ran out (or was taken away): nothing held may be answered any more."""
        if self._lease_until:
            self._lease_until = 0.0
            self.lapses += 1
            self._flush()

    # -- lookups ------------------------------------------------------------------------

    async def get(self, digest: str, repository: str) -> Descriptor | None:
        """The held answer, or None. An invalid digest raises as the Redis cache would."""
        if time.monotonic() >= self._lease_until:
            self._lapse()
            return None
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
        if time.monotonic() >= self._lease_until:
            self._lapse()
            return [None] * len(digests)
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
        if seq < 0 or not self.live or self._all_seen > seq or time.monotonic() >= self._lease_until:
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
            elif key.startswith(_BARRIER):
                # Every invalidation before it is applied: ack (from another connection).
                self._queue_ack(key)

    def _queue_ack(self, key: str) -> None:
        if key in self._acked:
            return
        parsed = nearlease.parse_barrier(key)
        if parsed is None:
            return
        self._acked[key] = None
        if len(self._acked) > _ACKED_KEPT:
            self._acked.popitem(last=False)
        acks, n = parsed
        self._acks_due.append((key, acks, f"{n} {self.member}"))
        if self._acker is None or self._acker.done():
            self._acker = asyncio.get_running_loop().create_task(self._send_acks(), name="redis-nearcache-ack")

    async def _send_acks(self) -> None:
        """Send the acks due, pipelined, until none are left."""
        while self._acks_due and not self._closed:
            due, self._acks_due = self._acks_due, []
            try:
                self._control_client()
                async with asyncio.timeout(self.setup_timeout), self._control_lock:
                    pipe = self._control_client().pipeline(transaction=False)
                    for barrier, acks, entry in due:
                        await self._ack_script(keys=[barrier, acks], args=[entry, nearlease.ACKS_TTL_MS], client=pipe)
                    await pipe.execute()
                self.acks += len(due)
            except Exception as err:  # the settler waits out our lease instead
                log.debug("redis near cache: cannot ack barriers (%s)", describe(err))

    def _control_client(self) -> Any:
        if self._control is None:
            self._control = Redis(connection_pool=self.pool)
            self._lease_script = self._control.register_script(nearlease.LEASE_SCRIPT)
            self._ack_script = self._control.register_script(nearlease.ACK_SCRIPT)
        return self._control

    async def _lease_call(self, mode: str) -> bool:
        """Register or renew the lease in Redis (bounded); True if Redis granted it."""
        self._control_client()
        async with asyncio.timeout(self.setup_timeout), self._control_lock:
            granted = await self._lease_script(
                keys=[nearlease.MEMBERS_KEY], args=[self.member, int(self.lease * 1000), mode]
            )
        return bool(granted)

    async def _register(self) -> None:
        """Register, then flush: nothing read before Redis counted us in is held, so a
        Clear whose barrier did not wait for us cannot have left anything here."""
        start = time.monotonic()
        await self._lease_call("register")
        self._flush()
        self._lease_until = start + self.lease * (1 - nearlease.MARGIN)

    async def _renew(self) -> None:
        """Renew every third of the lease, while tracking is set up."""
        while True:
            await asyncio.sleep(self.lease / 3)
            start = time.monotonic()
            try:
                granted = await self._lease_call("renew")
            except Exception as err:  # retried at the next third; the lease runs out meanwhile
                log.debug("redis near cache: cannot renew the lease (%s)", describe(err))
                continue
            if granted and time.monotonic() < self._lease_until:
                self._lease_until = start + self.lease * (1 - nearlease.MARGIN)
                continue
            # Ran out here first (this process was stopped or slow), or a Clear took it away.
            if not granted:
                self.evicted += 1
            log.warning(
                "redis near cache: lease %s; flushed, answering from Redis until registered again",
                "taken away by a Clear that waited for this process" if not granted else "ran out",
            )
            self._lapse()
            try:
                await self._register()
            except Exception as err:
                log.debug("redis near cache: cannot register again (%s)", describe(err))

    # -- the invalidation connection ----------------------------------------------------

    def start(self) -> None:
        """Set tracking up in the background (once; called from a running loop)."""
        if self._task is None and not self._closed:
            if self._pid != os.getpid():  # made before a fork: each process is its own member
                self._pid, self.member = os.getpid(), nearlease.new_id()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="redis-nearcache")

    async def _run(self) -> None:
        delay = BACKOFF_MIN
        degraded = False  # a loss or failed setup was logged; log the recovery
        while not self._closed:
            try:
                conn = await self._setup()
                try:
                    # Tracked before registered, registered before anything is held.
                    await self._register()
                except BaseException:
                    await self._release(conn)
                    raise
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
            self.live = True
            self.setups += 1
            delay = BACKOFF_MIN
            if degraded:
                log.warning("redis near cache: invalidation tracking set up again; near cache in use")
                degraded = False
            reason = "connection closed"
            renew = asyncio.get_running_loop().create_task(self._renew(), name="redis-nearcache-lease")
            try:
                await self._listen(conn)
            except Exception as err:  # any failure is a loss, never a dead task
                reason = describe(err)
            finally:
                # Before anything else can run: nothing held may be answered any more.
                self.live = False
                self._lease_until = 0.0
                self._flush()
                renew.cancel()
                await self._release(conn)
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await renew
            if self._closed:
                return
            await self._deregister()
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

    async def _deregister(self) -> None:
        """Leave the members (best effort; else the lease runs out): no barrier waits for
        a near cache that holds nothing until it is set up again."""
        with contextlib.suppress(Exception):
            self._control_client()
            async with asyncio.timeout(self.setup_timeout), self._control_lock:
                await self._control.zrem(nearlease.MEMBERS_KEY, self.member)

    async def _release(self, conn: Any) -> None:
        with contextlib.suppress(Exception):
            await conn.disconnect()
        with contextlib.suppress(Exception):
            await self.pool.release(conn)

    async def close(self) -> None:
        self._closed = True
        self.live = False
        self._lease_until = 0.0
        # Bounded: closing (a shutdown, a drain) never hangs on a task stuck in a Redis
        # call or on a Redis that no longer answers.
        tasks = [task for task in (self._task, self._acker) if task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            done, _ = await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT)
            for task in done:
                if not task.cancelled():
                    task.exception()  # retrieved, so an ended task's failure never warns
        self._task = self._acker = None
        if self._control is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._deregister(), CLOSE_TIMEOUT)
        with contextlib.suppress(Exception):
            await self.pool.disconnect()


__all__ = ["DEFAULT_SIZE", "NearCache", "NearStats"]
