"""What the near-cache tests share (tests/components/test_cache_nearcache.py and
tests/server/test_nearcache_settle.py): a Stat that reads "unknown" as None, a Stat
that waits until the near cache answers, and waits for the near cache's state."""

from __future__ import annotations

from collections.abc import Callable

from descriptor_client import BlobUnknownError, Descriptor
from descriptor_server.caches.redis import RedisCache, RedisCacheError
from descriptor_server.caches.redis.near import NearCache

from .support import until

#: A digest no test writes (the first Stat, which starts tracking, asks for it).
NEVER_WRITTEN = "sha256:" + "0" * 64


async def answer(cache: RedisCache, digest: str, repository: str = "") -> Descriptor | None:
    """The cache's answer, None for unknown."""
    try:
        return await cache.stat(digest, repository)
    except BlobUnknownError:
        return None


async def held(cache: RedisCache, digest: str, repository: str = "") -> Descriptor | None:
    """Stat until the answer comes from the near cache (its hit counter moves by one: a
    read that raced the invalidations of the writes just made is rightly not held), and
    return it."""
    near = cache.near
    assert near is not None

    async def hit() -> tuple[int, Descriptor | None]:
        before = near.hits
        got = await answer(cache, digest, repository)
        return near.hits - before, got

    return (await until(hit, lambda r: r[0] == 1))[1]


async def until_near(cache: RedisCache, ok: Callable[[NearCache], bool], timeout: float = 30.0) -> None:
    """Wait until ``ok`` holds of the cache's near cache (its state or a counter)."""
    near = cache.near
    assert near is not None

    async def state() -> NearCache:
        return near

    await until(state, ok, timeout=timeout)


async def live(cache: RedisCache, *, leased: bool = False) -> None:
    """Make the first call (which starts tracking) and wait until tracking is set up
    (and, with ``leased``, the near cache holds its lease)."""

    async def first() -> bool:
        try:
            await cache.stat(NEVER_WRITTEN)
        except RedisCacheError:  # the first connection (via Sentinel) may outlast a short readtimeout
            return False
        except BlobUnknownError:
            return True
        raise AssertionError("an empty Redis answered")

    await until(first, bool)
    await until_near(cache, lambda near: near.live and (near.leased or not leased))
