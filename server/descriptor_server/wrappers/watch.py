"""The cache's health: a start-up check naming the key at fault, a readiness probe,
and one line when a failing cache comes back.

- :func:`check_cache_at_start`: with ``storage.cache.blobdescriptor: redis``, one
  PING over the cache's own client (which connects, authenticates and selects the
  ``db`` as every call does). A Redis that cannot be reached, refuses the
  credentials or the ``db`` is logged as an ERROR naming the key
  (``redis.password: authentication failed ...``). The server still starts: the
  cache is best effort, Stat is answered from the backend until Redis answers.
- :class:`WatchedCache`: a cache wrapper that logs one WARNING when the cache first
  fails and one INFO line when it answers again after failing, with how long and how
  many calls it failed; and :meth:`WatchedCache.probe`, a cheap lookup that raises
  while the cache fails, for readiness that follows the cache
  (``grpc.healthprobecache``, off by default).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from descriptor_client.descriptor import Descriptor
from descriptor_client.errors import BackendUnavailableError, BlobUnknownError, InvalidArgumentError
from descriptor_client.protocol import BlobDescriptorService

from ..config import Config, RedisConfig
from ..core import loggers
from ..core.cache import Cache, Taken
from ..core.logutil import Recovery, describe

log = logging.getLogger(loggers.CACHE)

#: A digest no blob has (the SHA-256 of nothing is a real digest; this is not one in practice).
PROBE_DIGEST = "sha256:" + "0" * 64


# -- start-up check ------------------------------------------------------------------------


def redis_problem(cfg: RedisConfig, err: BaseException) -> tuple[str, str]:
    """The key at fault and the reason, for an error Redis (or redis-py) raised."""
    from redis.exceptions import (
        AuthenticationError,
        AuthenticationWrongNumberOfArgsError,
        ResponseError,
    )

    text = str(err) or type(err).__name__
    lowered = text.lower()
    if isinstance(err, AuthenticationWrongNumberOfArgsError):
        return "redis.username", f"this server has no ACL users (AUTH with a username refused): {text}"
    if isinstance(err, AuthenticationError) or "wrongpass" in lowered or "noauth" in lowered:
        if not cfg.password:
            return "redis.password", f"the server requires a password: {text}"
        who = f" for user {cfg.username!r}" if cfg.username else ""
        return "redis.password", f"authentication failed{who}: {text}"
    if isinstance(err, ResponseError) and "db" in lowered:
        return "redis.db", f"database {cfg.db} refused: {text}"
    if type(err).__name__ == "MasterNotFoundError":
        return "redis.mastername", f"no master {cfg.mastername!r} known to the sentinels: {text}"
    if isinstance(err, ResponseError) and ("noperm" in lowered or "permission" in lowered):
        return "redis.username", f"user lacks a permission: {text}"
    if isinstance(err, TimeoutError | OSError) or type(err).__name__ in ("ConnectionError", "TimeoutError"):
        return "redis.addrs", f"cannot connect to {', '.join(cfg.addrs)}: {text}"
    if "cluster" in lowered:
        return "redis.addrs", f"cannot use the cluster at {', '.join(cfg.addrs)}: {text}"
    return "redis", describe(err)


async def check_cache_at_start(config: Config, cache: BlobDescriptorService) -> str | None:
    """Log (ERROR) and return ``"<key>: <reason>"`` if the Redis cache cannot be used now.

    Nothing is raised: the server starts either way. Other caches need no check.
    """
    if config.storage.cache.blobdescriptor != "redis":
        return None
    if isinstance(cache, WatchedCache):
        cache = cache.inner
    client = getattr(cache, "client", None)
    if client is None:
        return None
    cfg = config.redis
    budget = cfg.dialtimeout + cfg.readtimeout + 1.0
    try:
        async with asyncio.timeout(budget):
            await client.ping()
    except TimeoutError:
        problem = ("redis.addrs", f"no answer from {', '.join(cfg.addrs)} within {budget:g}s")
    except Exception as err:
        problem = redis_problem(cfg, err)
    else:
        return None
    line = f"{problem[0]}: {problem[1]}"
    log.error("redis cache unusable at start, answering from the backend until it is: %s", line)
    return line


# -- failure and recovery, readiness -----------------------------------------------------

#: Answers, not failures, of a cache lookup.
_ANSWERS = (BlobUnknownError, InvalidArgumentError)


class WatchedCache:
    """``inner`` with its failures and recovery logged once each; also a readiness probe."""

    def __init__(self, inner: Cache, name: str = "cache") -> None:
        self.inner = inner
        self.name = name
        self.recovery = Recovery(log, name, warn_on_failure=True)

    @property
    def failing(self) -> bool:
        return self.recovery.failing

    @property
    def failed_calls(self) -> int:
        return self.recovery.failed_calls

    async def _watch(self, call: Callable[[], Awaitable[Any]]) -> Any:
        try:
            result = await call()
        except _ANSWERS:
            self.recovery.answered()
            raise
        except Exception as err:
            self.recovery.failed(err)
            raise
        self.recovery.answered()
        return result

    async def stat(self, digest: str, repository: str = "") -> Descriptor:
        desc: Descriptor = await self._watch(lambda: self.inner.stat(digest, repository))
        return desc

    async def stat_many(self, digests: Sequence[str], repository: str = "") -> list[Descriptor | None]:
        found: list[Descriptor | None] = await self._watch(lambda: self.inner.stat_many(digests, repository))
        return found

    async def set_descriptor(self, digest: str, descriptor: Descriptor, repository: str = "") -> None:
        await self._watch(lambda: self.inner.set_descriptor(digest, descriptor, repository))

    async def token(self, fenced: Sequence[str] = ()) -> tuple[int, bool]:
        answer: tuple[int, bool] = await self._watch(lambda: self.inner.token(fenced))
        return answer

    async def fill(self, digest: str, descriptor: Descriptor, repository: str, token: int) -> bool:
        written: bool = await self._watch(lambda: self.inner.fill(digest, descriptor, repository, token))
        return written

    async def invalidate(self, digest: str, repository: str = "") -> tuple[bool, int]:
        answer: tuple[bool, int] = await self._watch(lambda: self.inner.invalidate(digest, repository))
        return answer

    async def clear(self, digest: str, repository: str = "") -> None:
        await self._watch(lambda: self.inner.clear(digest, repository))

    async def restore(self, digest: str, taken: Taken, epoch: int) -> bool:
        restored: bool = await self._watch(lambda: self.inner.restore(digest, taken, epoch))
        return restored

    async def lists(self, digest: str, repository: str) -> bool:
        """The inner cache's membership check, where it has one (a shared Redis)."""
        lists = getattr(self.inner, "lists", None)
        return False if lists is None else bool(await self._watch(lambda: lists(digest, repository)))

    async def settle(self, digest: str) -> None:
        await self._watch(lambda: self.inner.settle(digest))

    async def probe(self) -> None:
        """Return while the cache answers a lookup; raise BackendUnavailableError while it fails."""
        try:
            await self.stat(PROBE_DIGEST)
        except _ANSWERS:
            return
        except Exception as err:
            raise BackendUnavailableError(f"{self.name} unavailable: {describe(err)}") from None

    async def close(self) -> None:
        await self.inner.close()


Probe = Callable[[], Awaitable[None]]


def combined_probe(*probes: Probe | None) -> Probe | None:
    """One probe that fails when any of ``probes`` fails (None entries skipped)."""
    live = [p for p in probes if p is not None]
    if not live:
        return None
    if len(live) == 1:
        return live[0]

    async def probe() -> None:
        for one in live:
            await one()

    return probe


__all__ = ["PROBE_DIGEST", "WatchedCache", "check_cache_at_start", "combined_probe", "redis_problem"]
