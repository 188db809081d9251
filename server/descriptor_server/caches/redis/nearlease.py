"""Leases and barriers: a Clear returns only once no near cache of any process can answer it.

Every process's near cache (:mod:`.near`) is a *member*: it holds a lease in the
sorted set :data:`MEMBERS_KEY` (member id, score = the lease's deadline in Redis time,
milliseconds) and renews it every third of the lease. It answers from its memory only
while its own lease is held by its own clock: ``time.monotonic()`` before the start of
its last successful renewal plus the lease minus :data:`MARGIN` of it. As the renewal
was sent before Redis executed it, that local deadline comes before the one Redis
holds. A process that is stopped, or cut off from Redis, stops answering from memory
when its lease runs out, before Redis counts it gone; it flushes, registers again, and
flushes once more before it holds anything again.

:class:`Settler` is the other side. After a Clear's invalidation, :meth:`Settler.settle`
writes a *barrier* key under :data:`BARRIER_PREFIX` (a tracked prefix: every member
gets its invalidation) and reads the live members, in one script. Redis sends a
connection's invalidations in order, and the Clear's own were queued before its reply,
so a member that sees the barrier's invalidation has applied the Clear's. It then acks
(:data:`ACK_SCRIPT`: pushes ``"<n> <member>"`` to the settler's ack list, only while the
barrier exists). ``settle`` waits, on one blocking ``BLPOP`` connection per process
shared by every Clear in flight, until each member seen live has acked or its lease
has run out. A member that renewed meanwhile without acking (alive but lagging) is
*evicted* at its deadline: removed from the set, so its next renewal fails and it
flushes; the wait then lasts until the lease it last renewed runs out. A settle thus
waits at most two leases, and for a member that does not ack, at most one of its
leases once it stopped renewing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import NoPermissionError

from ...core import loggers
from ...core.logutil import describe

log = logging.getLogger(loggers.NEAR_CACHE)

#: Default ``redis.nearcache.lease``, seconds.
DEFAULT_LEASE = 3.0
#: The share of a lease a member's own clock gives up (clock rates, scheduling).
MARGIN = 0.1
#: The sorted set of members (near caches) and their lease deadlines (ms, Redis time).
MEMBERS_KEY = "descriptor::nearcache::members"
#: A tracked prefix: ``<prefix><settler id>::<n>``, one per settle.
BARRIER_PREFIX = "descriptor::nearcache::barrier::"
#: ``<prefix><settler id>``: the list a settler's barriers are acked on.
ACKS_PREFIX = "descriptor::nearcache::acks::"
#: Milliseconds an ack list outlives its last ack (a settler that went away).
ACKS_TTL_MS = 60_000
#: Seconds one BLPOP blocks before the waiter looks whether anyone still waits.
BLPOP_SECONDS = 1.0

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

#: KEYS: members. ARGV: member, lease ms, mode. Mode ``register`` (re)adds the member;
#: ``renew`` extends its lease only if it still holds one (not evicted, not run out).
#: Drops members whose lease ran out. Returns 1, or 0 when a renewal was refused.
LEASE_SCRIPT = (
    _NOW
    + """
if ARGV[3] == 'renew' then
  local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if not s or tonumber(s) <= now then return 0 end
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return 1
"""
)

#: KEYS: members, the barrier. Returns {now, {member, deadline, ...}} of the members whose
#: lease is live, and writes the barrier (which outlives any wait for it) if there are any.
SETTLE_SCRIPT = (
    _NOW
    + """
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES')
if #live > 0 then
  local last = tonumber(live[#live])
  redis.call('SET', KEYS[2], '1', 'PX', math.floor(2 * (last - now)) + 5000)
end
return {now, live}
"""
)

#: KEYS: members. ARGV: members that did not ack by their deadline. Each one whose lease
#: was renewed meanwhile is removed; returns {now, deadline or '0' per member}.
EVICT_SCRIPT = (
    _NOW
    + """
local out = {now}
for i = 1, #ARGV do
  local s = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if s and tonumber(s) > now then
    redis.call('ZREM', KEYS[1], ARGV[i])
    out[i + 1] = s
  else
    out[i + 1] = '0'
  end
end
return out
"""
)

#: KEYS: the barrier, the settler's ack list. ARGV: ``"<n> <member>"``, the list's TTL (ms).
#: Acks only while the barrier exists (its expiry, also reported, is not acked).
ACK_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
"""


def barrier_key(settler: str, n: int) -> str:
    return f"{BARRIER_PREFIX}{settler}::{n}"


def parse_barrier(key: str) -> tuple[str, str] | None:
    """``(ack list, "<n>")`` of a barrier key, or None if it is not one."""
    settler, sep, n = key[len(BARRIER_PREFIX) :].partition("::")
    if not sep or not settler or not n.isdigit():
        return None
    return ACKS_PREFIX + settler, n


def new_id() -> str:
    """A member or settler id: random (never reused across processes or restarts)."""
    return secrets.token_hex(8)


@dataclass(frozen=True)
class SettleStats:
    """A settler's counters, read at scrape time."""

    barriers: int = 0
    acks: int = 0
    waited_out: int = 0
    evictions: int = 0
    failures: int = 0


@dataclass
class _Wait:
    acked: set[str] = field(default_factory=set)
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class Settler:
    """Barriers for one process's Clears; see the module documentation.

    ``client`` is a redis-py asyncio client whose pool allows two connections (one for
    the scripts, one for the blocking ``BLPOP``), to the master. ``fallback``: seconds
    a settle waits when Redis cannot run the barrier (every lease, this process's
    setting, has run out by then or was renewed by a member whose invalidation
    connection answered its pings meanwhile).
    """

    def __init__(self, client: Any, *, fallback: float = DEFAULT_LEASE, timeout: float = 1.0) -> None:
        self.client = client
        self.fallback = fallback
        self.timeout = timeout
        self.id = new_id()
        self.acks_key = ACKS_PREFIX + self.id
        self._settle = client.register_script(SETTLE_SCRIPT)
        self._evict = client.register_script(EVICT_SCRIPT)
        self._lock = asyncio.Lock()
        self._n = 0
        self._pending: dict[str, _Wait] = {}
        self._waiter: asyncio.Task[None] | None = None
        self._closed = False
        #: Members already logged as waited out (bounded; one line per member, not per Clear).
        self._logged: set[str] = set()
        self._refused = False
        self.barriers = 0
        self.acks = 0
        self.waited_out = 0
        self.evictions = 0
        self.failures = 0

    def stats(self) -> SettleStats:
        return SettleStats(self.barriers, self.acks, self.waited_out, self.evictions, self.failures)

    async def _script(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        async with asyncio.timeout(self.timeout):
            async with self._lock:
                return await script(keys=keys, args=args)

    async def settle(self, digest: str) -> None:
        """Return once every near cache live in Redis has applied the invalidations made
        before this call, or can no longer answer (its lease ran out). ``digest`` names
        the Clear in logs only: the barrier covers every invalidation before it."""
        if self._closed:
            return
        self._n += 1
        n = str(self._n)
        wait = self._pending[n] = _Wait()  # before the barrier: acks may come back at once
        try:
            try:
                now_ms, live = await self._script(self._settle, [MEMBERS_KEY, barrier_key(self.id, self._n)], [])
            except NoPermissionError as err:
                # Refused by an ACL without descriptor::nearcache::*: near caches using
                # the same credentials cannot register either, so none can be waited for.
                self.failures += 1
                if not self._refused:
                    self._refused = True
                    log.warning(
                        "redis near cache: Redis refuses the Clears' barriers (%s); near caches with these "
                        "credentials cannot register either (see docs/nearcache.md for the ACL)",
                        describe(err),
                    )
                return
            except Exception as err:  # Redis could not run the barrier: wait out every lease
                self.failures += 1
                log.warning(
                    "redis near cache: cannot set a barrier after the Clear of %s (%s); waiting %gs, "
                    "the lease, instead",
                    digest,
                    describe(err),
                    self.fallback,
                )
                await asyncio.sleep(self.fallback)
                return
            if not live:
                return
            self.barriers += 1
            self._start_waiter()
            await self._wait(wait, self._deadlines(now_ms, live[0::2], live[1::2]))
        finally:
            self._pending.pop(n, None)

    @staticmethod
    def _deadlines(now_ms: Any, members: list[Any], scores: list[Any]) -> dict[str, float]:
        """Local monotonic deadlines, measured from when the reply arrived (so never before
        the one Redis holds: the script ran before)."""
        arrived = time.monotonic()
        now = float(now_ms)
        return {str(m): arrived + (float(s) - now) / 1000.0 for m, s in zip(members, scores, strict=True)}

    async def _wait(self, wait: _Wait, deadlines: dict[str, float]) -> None:
        evicted: set[str] = set()
        while True:
            left = {m: d for m, d in deadlines.items() if m not in wait.acked}
            if not left:
                return
            now = time.monotonic()
            due = [m for m, d in left.items() if d <= now]
            if due:
                fresh = [m for m in due if m not in evicted]
                for m in due:
                    del deadlines[m]
                if fresh:
                    # Renewed without acking (alive but behind): take its lease away, then
                    # wait until the lease it holds runs out (it flushes when it notices).
                    renewed = await self._evict_members(fresh)
                    evicted.update(renewed)
                    deadlines.update(renewed)
                gone = [m for m in due if m not in deadlines]
                self.waited_out += len(gone)
                for m in gone:
                    if m not in self._logged and len(self._logged) < 1024:
                        self._logged.add(m)
                        log.warning(
                            "redis near cache: a Clear waited for near cache %s until its lease ran out "
                            "(stopped, cut off from Redis, or gone); it no longer answers from memory",
                            m,
                        )
                continue
            wait.changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left.values()) - now):
                    await wait.changed.wait()

    async def _evict_members(self, members: list[str]) -> dict[str, float]:
        try:
            reply = await self._script(self._evict, [MEMBERS_KEY], members)
        except Exception as err:
            # Cannot tell whether they renewed: wait one more lease of ours, the longest
            # a renewal made before now can have been for (same setting on every replica).
            log.warning("redis near cache: cannot evict members that did not ack (%s)", describe(err))
            return {m: time.monotonic() + self.fallback for m in members}
        arrived = time.monotonic()
        now = float(reply[0])
        out: dict[str, float] = {}
        for m, s in zip(members, reply[1:], strict=True):
            if float(s) > 0:
                out[m] = arrived + (float(s) - now) / 1000.0
                self.evictions += 1
                log.warning("redis near cache: member %s renewed its lease without acking a barrier; evicted", m)
        return out

    # -- the acks -----------------------------------------------------------------------

    def _start_waiter(self) -> None:
        if self._waiter is None or self._waiter.done():
            self._waiter = asyncio.get_running_loop().create_task(self._wait_acks(), name="redis-nearcache-acks")

    async def _wait_acks(self) -> None:
        """Pop acks while anyone waits; one connection, blocking, no polling."""
        pool = self.client.connection_pool
        delay = 0.05
        while self._pending and not self._closed:
            try:
                async with asyncio.timeout(self.timeout):
                    conn = await pool.get_connection()
            except Exception:
                await asyncio.sleep(delay)
                delay = min(2 * delay, 1.0)
                continue
            try:
                while self._pending and not self._closed:
                    await conn.send_command("BLPOP", self.acks_key, BLPOP_SECONDS)
                    reply = await conn.read_response(timeout=BLPOP_SECONDS + self.timeout)
                    if reply:
                        self._ack(reply[1])
                    delay = 0.05
            except Exception as err:  # the settles still end by the leases
                log.debug("redis near cache: ack connection failed (%s)", describe(err))
                with contextlib.suppress(Exception):
                    await conn.disconnect()
                await asyncio.sleep(delay)
                delay = min(2 * delay, 1.0)
            finally:
                with contextlib.suppress(Exception):
                    await pool.release(conn)

    def _ack(self, entry: Any) -> None:
        n, _, member = str(entry).partition(" ")
        wait = self._pending.get(n)
        if wait is None:
            return  # late: that settle has returned
        self.acks += 1
        wait.acked.add(member)
        wait.changed.set()

    async def close(self) -> None:
        self._closed = True
        task, self._waiter = self._waiter, None
        if task is not None:
            task.cancel()
            done, _ = await asyncio.wait([task], timeout=5.0)  # bounded: closing never hangs
            for ended in done:
                if not ended.cancelled():
                    ended.exception()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.client.aclose(), 5.0)


__all__ = [
    "ACKS_PREFIX",
    "ACK_SCRIPT",
    "BARRIER_PREFIX",
    "DEFAULT_LEASE",
    "LEASE_SCRIPT",
    "MARGIN",
    "MEMBERS_KEY",
    "SettleStats",
    "Settler",
    "barrier_key",
    "new_id",
    "parse_barrier",
]
