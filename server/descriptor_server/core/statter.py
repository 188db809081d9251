"""The cached blob statter: a cache in front of a backend.

This is distribution's ``cachedBlobStatter`` as a service: Stat asks the cache, falls
back to the backend on a miss and fills the cache, counting requests, hits, misses
and errors. It validates every input before any cache or backend sees it, in the
service's order: key digest, repository, descriptor, deletion switch.

Clear is final. Every backend read on a miss is a *flight*, shared by the concurrent
misses on its key and writing its answer back to the cache when it lands. A Clear
(1) stops the write-back of every flight it can affect, including flights that start
while it runs, (2) waits for a write-back already under way, so the cache cannot be
written after the Clear removed the entry, and (3) retires those flights before it
returns, so a Stat that starts afterwards reads the backend afresh instead of joining
a read that began before the blob was deleted. A Clear the backend refuses
(UNSUPPORTED, UNAVAILABLE) puts back what it took from the cache: it changed nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from descriptor_client.descriptor import Descriptor, validate_descriptor
from descriptor_client.digest import all_valid, validate_digest, validate_repository
from descriptor_client.errors import (
    BackendUnavailableError,
    BatchTooLargeError,
    BlobUnknownError,
    DescriptorError,
    UnsupportedError,
)

from . import loggers
from .backend import Backend
from .cache import Cache
from .logutil import RateLimitedLog, describe
from .revalidate import Revalidator

log = logging.getLogger(loggers.STATTER)

DEFAULT_MAX_BATCH = 1000
#: Digests remembered as valid by BatchStat (cleared when full).
VALID_MEMO_MAX = 16384

Key = tuple[str, str]  # (digest, repository)


@dataclass
class StatterMetrics:
    """Counters since start; read by GetMetrics and by the Prometheus collector."""

    requests: int = 0
    hits: int = 0
    misses: int = 0
    errors: int = 0
    #: Revalidations (``storage.cache.revalidate``): started, entries found gone and
    #: removed, backend failures, and those skipped by the rate limit.
    revalidations: int = 0
    revalidation_removed: int = 0
    revalidation_failed: int = 0
    revalidation_skipped: int = 0


@dataclass(eq=False)
class _Flight:
    """A backend Stat in flight, shared by every concurrent miss on the same key."""

    write: bool
    task: asyncio.Future[Descriptor] | None = None
    #: Set while the answer is being written to the cache; a Clear waits for it.
    writing: asyncio.Future[None] | None = field(default=None)


def _affects(clear: Key, key: Key) -> bool:
    """Whether a Clear of ``clear`` must stop a flight on ``key``.

    A global Clear affects every scope of the digest; a repository Clear affects that
    repository and the global entry (which a repository miss also sets).
    """
    digest, repository = clear
    return key[0] == digest and (not repository or key[1] in (repository, ""))


class CachedBlobStatter:
    """Answers Stat from ``cache``, falling back to ``backend``; primes and clears both."""

    def __init__(
        self,
        cache: Cache,
        backend: Backend,
        *,
        delete_enabled: bool = False,
        max_batch: int = DEFAULT_MAX_BATCH,
        revalidator: Revalidator | None = None,
    ) -> None:
        self.cache = cache
        self.backend = backend
        self.delete_enabled = delete_enabled
        self.max_batch = max_batch
        self.revalidator = revalidator
        self.metrics = StatterMetrics()
        self._inflight: dict[Key, _Flight] = {}
        self._clearing: Counter[Key] = Counter()  # the Clears in progress
        self._valid: set[str] = set()  # digests recently validated by BatchStat (bounded)
        self._cache_log = RateLimitedLog(log)
        self._background: set[asyncio.Future[None]] = set()

    # -- Stat ------------------------------------------------------------------

    async def stat(self, digest: str, repository: str = "") -> Descriptor:
        validate_digest(digest)
        validate_repository(repository)
        metrics = self.metrics
        metrics.requests += 1
        try:
            desc = await self.cache.stat(digest, repository)
        except BlobUnknownError:
            cache_ok = True
        except Exception as err:  # any other cache failure: answer from the backend
            metrics.errors += 1
            self._cache_log.warning("cache stat failed, answering from the backend: %s", describe(err))
            cache_ok = False
        else:
            metrics.hits += 1
            if self.revalidator is not None and self.revalidator.due((digest, repository)):
                self._revalidate(digest, repository)
            return desc
        metrics.misses += 1
        return await self._miss(digest, repository, cache_ok)

    def _revalidate(self, digest: str, repository: str) -> None:
        """Check a cached entry against the backend in the background (the hit is answered)."""
        key = (digest, repository)
        if key in self._inflight:  # coalesced: a read of this key is already under way
            return
        assert self.revalidator is not None
        if not self.revalidator.allow():
            self.metrics.revalidation_skipped += 1
            return
        self.metrics.revalidations += 1
        self._miss(digest, repository, False).add_done_callback(
            lambda done: self._background_task(self._revalidated(digest, repository, done))
        )

    def _background_task(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._background.discard)

    async def _revalidated(self, digest: str, repository: str, done: asyncio.Future[Descriptor]) -> None:
        assert self.revalidator is not None
        err = None if done.cancelled() else done.exception()
        if err is None and not done.cancelled():
            self.revalidator.confirmed((digest, repository))
        elif isinstance(err, BlobUnknownError):
            # Gone behind the cache's back: removed as a Clear of this scope removes it.
            self.revalidator.forget((digest, repository))
            self.metrics.revalidation_removed += 1
            log.info(
                "revalidation: %s is gone%s; removed from the cache", digest, f" from {repository}" * bool(repository)
            )
            try:
                await self.cache.clear(digest, repository)
            except BlobUnknownError:
                pass
            except Exception as clear_err:
                self.metrics.errors += 1
                self._cache_log.warning("cache clear after a revalidation failed: %s", describe(clear_err))
                return
            await self._settle(digest)
        else:
            self.metrics.revalidation_failed += 1

    def _miss(self, digest: str, repository: str, cache_ok: bool) -> asyncio.Future[Descriptor]:
        """The backend answer for a miss, shared by every concurrent miss on the key."""
        key = (digest, repository)
        flight = self._inflight.get(key)
        if flight is None:
            write = cache_ok and not any(_affects(clear, key) for clear in self._clearing)
            flight = self._inflight[key] = _Flight(write)
            # The fetch runs as its own task so that a caller that gives up (deadline,
            # cancellation) does not fail the other callers waiting on it.
            flight.task = task = asyncio.ensure_future(self._fetch(flight, digest, repository))
            task.add_done_callback(lambda done: self._landed(key, flight, done))
        assert flight.task is not None
        return asyncio.shield(flight.task)

    def _landed(self, key: Key, flight: _Flight, task: asyncio.Future[Descriptor]) -> None:
        if self._inflight.get(key) is flight:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved here, so an unawaited failure never warns

    async def _fetch(self, flight: _Flight, digest: str, repository: str) -> Descriptor:
        try:
            desc = await self.backend.stat(digest, repository)
        except DescriptorError:
            raise
        except Exception as err:
            log.warning("backend stat of %s failed: %s", digest, describe(err))
            raise BackendUnavailableError(f"backend failed: {describe(err)}") from err
        if flight.write:
            flight.writing = asyncio.get_running_loop().create_future()
            try:
                written = await self.cache.fill(digest, desc, repository)
                if written and self.revalidator is not None:
                    self.revalidator.confirmed((digest, repository))
            except Exception as err:  # best effort: logged, never returned
                self.metrics.errors += 1
                self._cache_log.warning("cache write after a miss failed: %s", describe(err))
            finally:
                flight.writing.set_result(None)
                flight.writing = None
        return desc

    async def batch_stat(self, digests: Sequence[str], repository: str = "") -> list[Descriptor | DescriptorError]:
        """Stat each digest: a bad or unknown digest fails its item, not the call.

        One cache call (``stat_many``) looks up the whole batch; the misses go to the
        backend concurrently, through the same coalesced flights as Stat.
        """
        validate_repository(repository)
        n = len(digests)
        if n > self.max_batch:
            raise BatchTooLargeError(f"{n} digests in one batch, at most {self.max_batch} allowed")
        out: list[Descriptor | DescriptorError | None] = [None] * n
        positions: Sequence[int]
        keys: Sequence[str]
        if self._all_valid(digests):
            positions, keys = range(n), digests
        else:
            positions, keys = [], []
            for i, digest in enumerate(digests):
                try:
                    validate_digest(digest)
                except DescriptorError as err:
                    out[i] = err
                else:
                    positions.append(i)
                    keys.append(digest)
        metrics = self.metrics
        metrics.requests += len(keys)
        found: list[Descriptor | None]
        cache_ok = True
        try:
            found = await self.cache.stat_many(keys, repository) if keys else []
        except Exception as err:  # the cache failed: every lookup is an error and a miss
            metrics.errors += len(keys)
            self._cache_log.warning("cache stat_many failed, answering from the backend: %s", describe(err))
            found, cache_ok = [None] * len(keys), False
        # all(): a Descriptor is always true, and all() never calls its Python __eq__.
        if self.revalidator is not None:
            due = self.revalidator.due
            for digest, desc in zip(keys, found, strict=True):
                if desc is not None and due((digest, repository)):
                    self._revalidate(digest, repository)
        if len(keys) == n and all(found):  # the common case: all valid, all cached
            metrics.hits += n
            return found  # type: ignore[return-value]  # no None in it
        # A digest repeated in the batch is fetched once; as if the batch ran in
        # order, a repeat counts as a hit when the first fetch answered and was cached.
        fetches: dict[str, asyncio.Future[Descriptor]] = {}
        misses: list[tuple[int, str]] = []
        hits = 0
        for i, digest, desc in zip(positions, keys, found, strict=True):
            if desc is None:
                if digest not in fetches:
                    fetches[digest] = self._miss(digest, repository, cache_ok)
                misses.append((i, digest))
            else:
                out[i] = desc
                hits += 1
        if fetches:
            answers = dict(zip(fetches, await asyncio.gather(*fetches.values(), return_exceptions=True), strict=True))
            first: set[str] = set()
            for i, digest in misses:
                answer = answers[digest]
                if isinstance(answer, DescriptorError | Descriptor):
                    out[i] = answer
                elif isinstance(answer, BaseException):
                    raise answer
                if digest not in first:
                    first.add(digest)
                elif cache_ok and isinstance(answer, Descriptor):
                    hits += 1  # a repeat of a digest fetched (and cached) earlier in the batch
        metrics.hits += hits
        metrics.misses += len(keys) - hits
        return out  # type: ignore[return-value]  # every slot is filled above

    def _all_valid(self, digests: Sequence[str]) -> bool:
        """True if every digest is valid; digests seen valid before are found by one set call."""
        valid = self._valid
        if valid.issuperset(digests):
            return True
        if not all_valid(digests):
            return False
        if len(valid) + len(digests) > VALID_MEMO_MAX:
            valid.clear()
        valid.update(digests)
        return True

    # -- SetDescriptor -------------------------------------------------------------

    async def set_descriptor(self, digest: str, descriptor: Descriptor, repository: str = "") -> None:
        validate_digest(digest)
        validate_repository(repository)
        validate_descriptor(digest, descriptor)
        try:
            await self.cache.set_descriptor(digest, descriptor, repository)
        except Exception as err:  # the cache is best effort
            self.metrics.errors += 1
            self._cache_log.warning("cache set_descriptor failed: %s", describe(err))
        else:
            if self.revalidator is not None:
                self.revalidator.confirmed((digest, repository))

    # -- Revalidate ----------------------------------------------------------------

    async def revalidate(self, digest: str, repository: str = "") -> Descriptor:
        """Check the scope's entry against the backend now, bypassing the cache.

        The backend holds the blob: the cache is written and the descriptor returned.
        It does not: the scope's cache entries are removed as a Clear removes them
        (never the backend) and BLOB_UNKNOWN is raised. A backend failure changes
        nothing. Needs no deletion switch: it only makes the cache agree with the backend.
        """
        validate_digest(digest)
        validate_repository(repository)
        key = (digest, repository)
        try:
            desc = await self.backend.stat(digest, repository)
        except BlobUnknownError:
            await self._stop_flights(key)
            try:
                await self.cache.clear(digest, repository)
            except BlobUnknownError:
                pass
            except Exception as err:
                self.metrics.errors += 1
                self._cache_log.warning("cache clear after a revalidation failed: %s", describe(err))
                raise BackendUnavailableError(f"cache failed, the entry may remain: {describe(err)}") from err
            await self._settle(digest)
            if self.revalidator is not None:
                self.revalidator.forget(key)
            raise
        except DescriptorError:
            raise
        except Exception as err:
            log.warning("backend stat of %s failed: %s", digest, describe(err))
            raise BackendUnavailableError(f"backend failed: {describe(err)}") from err
        try:
            await self.cache.fill(digest, desc, repository)
        except Exception as err:  # best effort, as after a miss
            self.metrics.errors += 1
            self._cache_log.warning("cache write after a revalidation failed: %s", describe(err))
        else:
            if self.revalidator is not None:
                self.revalidator.confirmed(key)
        return desc

    # -- Clear ---------------------------------------------------------------------

    async def _settle(self, digest: str) -> None:
        """After a removal: return once no near cache of any process answers it any more."""
        settle = getattr(self.cache, "settle", None)
        if settle is not None:
            await settle(digest)

    async def clear(self, digest: str, repository: str = "") -> None:
        validate_digest(digest)
        validate_repository(repository)
        if not self.delete_enabled:
            raise UnsupportedError("deletion is disabled (storage.delete.enabled is false)")
        if not self.backend.supports_clear(repository):
            scope = "repository scope" if repository else "global scope"
            raise UnsupportedError(f"the backend cannot clear in the {scope}")
        clear = (digest, repository)
        self._clearing[clear] += 1
        try:
            await self._stop_flights(clear)
            await self._clear(digest, repository)
            await self._settle(digest)
        finally:
            self._clearing[clear] -= 1
            if not self._clearing[clear]:
                del self._clearing[clear]
            # Flights that began while the Clear ran read the blob before it was gone:
            # a Stat that starts after the Clear must not join them.
            self._retire(clear)

    async def _stop_flights(self, clear: Key) -> None:
        """Stop the write-back of every flight the Clear affects, and retire it."""
        writing = []
        for flight in self._retire(clear):
            flight.write = False
            if flight.writing is not None:
                writing.append(flight.writing)
        if writing:  # a write-back already under way lands before the cache is cleared
            await asyncio.gather(*(asyncio.shield(w) for w in writing))

    def _retire(self, clear: Key) -> list[_Flight]:
        """Take the flights the Clear affects out of the table (their callers keep them)."""
        retired = [key for key in self._inflight if _affects(clear, key)]
        return [self._inflight.pop(key) for key in retired]

    async def _clear(self, digest: str, repository: str) -> None:
        taken = await self._snapshot(digest, repository)
        held = False
        try:
            await self.cache.clear(digest, repository)
            held = True
        except BlobUnknownError:
            pass
        except Exception as err:
            # Refuse rather than clear the backend alone: a cache that comes back still
            # holding the entry would answer Stat for a deleted blob. Nothing has
            # changed, so the caller (a garbage collector) can simply retry.
            self.metrics.errors += 1
            self._cache_log.warning("cache clear failed, nothing cleared: %s", describe(err))
            raise BackendUnavailableError(f"cache failed, nothing was cleared: {describe(err)}") from err
        try:
            await self.backend.clear(digest, repository)
            held = True
        except BlobUnknownError:
            pass
        except DescriptorError:
            await self._restore(digest, taken)  # UNSUPPORTED at delete time: nothing changed
            raise
        except Exception as err:
            log.warning("backend clear of %s failed: %s", digest, describe(err))
            await self._restore(digest, taken)
            raise BackendUnavailableError(f"backend failed, nothing was cleared: {describe(err)}") from err
        if not held:
            raise BlobUnknownError.of(digest, repository)
        await self._clear_again(digest, repository)

    async def _clear_again(self, digest: str, repository: str) -> None:
        """Clear the cache once more now that the backend has deleted: a shared cache's
        fence then stands for its whole TTL from the deletion (however long the delete
        took), and anything written back meanwhile by a process that does not honour the
        fence (a distribution registry sharing the Redis) is removed."""
        try:
            await self.cache.clear(digest, repository)
        except BlobUnknownError:
            pass
        except Exception as err:  # the deletion is done; the first clear already emptied the cache
            self.metrics.errors += 1
            self._cache_log.warning("cache clear after the backend deleted failed: %s", describe(err))

    async def _snapshot(self, digest: str, repository: str) -> list[tuple[Descriptor, str]]:
        """What the cache holds that a Clear of this scope removes: (descriptor, scope),
        global entry first, so that :meth:`_restore` can put it back as it was."""
        taken: list[tuple[Descriptor, str]] = []
        for scope in ("", repository) if repository else ("",):
            try:
                taken.append((await self.cache.stat(digest, scope), scope))
            except Exception:  # unknown, or the cache fails (then its clear refuses too)
                continue
        return taken

    async def _restore(self, digest: str, taken: list[tuple[Descriptor, str]]) -> None:
        for desc, scope in taken:
            try:
                await self.cache.set_descriptor(digest, desc, scope)
            except Exception as err:
                self.metrics.errors += 1
                self._cache_log.warning("cache restore after a refused clear failed: %s", describe(err))

    async def close(self) -> None:
        for component in (self.cache, self.backend):
            try:
                await component.close()
            except Exception as err:  # closing must not mask shutdown
                log.warning("close failed: %s", describe(err))
