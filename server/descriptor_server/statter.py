"""The cached blob statter: a cache in front of a backend (CONTRACT section 3).

This is distribution's ``cachedBlobStatter`` as a service: Stat asks the cache, falls
back to the backend on a miss and fills the cache, counting requests, hits, misses
and errors. It validates every input before any cache or backend sees it, in the
contract's order: key digest, repository, descriptor, deletion switch.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from descriptor_client.descriptor import Descriptor, validate_descriptor
from descriptor_client.digest import validate_digest, validate_repository
from descriptor_client.errors import (
    BackendUnavailableError,
    BatchTooLargeError,
    BlobUnknownError,
    DescriptorError,
    UnsupportedError,
)
from descriptor_client.protocol import BlobDescriptorService

from .backends import Backend
from .logutil import RateLimitedLog, describe

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 1000
#: Digests remembered as valid by BatchStat (cleared when full).
VALID_MEMO_MAX = 16384


@dataclass
class StatterMetrics:
    """Counters since start; read by GetMetrics and by the Prometheus collector."""

    requests: int = 0
    hits: int = 0
    misses: int = 0
    errors: int = 0


@dataclass
class _Flight:
    """A backend Stat in flight, shared by every concurrent miss on the same key."""

    task: asyncio.Future[Descriptor]
    write: bool
    waiters: int = field(default=1)


class CachedBlobStatter:
    """Answers Stat from ``cache``, falling back to ``backend``; primes and clears both."""

    def __init__(
        self,
        cache: BlobDescriptorService,
        backend: Backend,
        *,
        delete_enabled: bool = False,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        self.cache = cache
        self.backend = backend
        self.delete_enabled = delete_enabled
        self.max_batch = max_batch
        self.metrics = StatterMetrics()
        self._inflight: dict[tuple[str, str], _Flight] = {}
        self._valid: set[str] = set()  # digests recently validated by BatchStat (bounded)
        self._cache_log = RateLimitedLog(log)

    # -- Stat ------------------------------------------------------------------

    async def stat(self, digest: str, repository: str = "") -> Descriptor:
        validate_digest(digest)
        validate_repository(repository)
        return await self._stat(digest, repository)

    async def _stat(self, digest: str, repository: str) -> Descriptor:
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
            return desc
        metrics.misses += 1
        return await self._miss(digest, repository, cache_ok)

    def _miss(self, digest: str, repository: str, cache_ok: bool) -> asyncio.Future[Descriptor]:
        """The backend answer for a miss, shared by every concurrent miss on the key."""
        key = (digest, repository)
        flight = self._inflight.get(key)
        if flight is None:
            # The fetch runs as its own task so that a caller that gives up (deadline,
            # cancellation) does not fail the other callers waiting on it.
            task = asyncio.ensure_future(self._fetch(digest, repository))
            flight = self._inflight[key] = _Flight(task, write=cache_ok, waiters=1)
            task.add_done_callback(functools.partial(self._landed, key))
        else:
            flight.waiters += 1
        return asyncio.shield(flight.task)

    def _landed(self, key: tuple[str, str], task: asyncio.Future[Descriptor]) -> None:
        if self._inflight.get(key) is not None and self._inflight[key].task is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved here, so an unawaited failure never warns

    async def _fetch(self, digest: str, repository: str) -> Descriptor:
        try:
            desc = await self.backend.stat(digest, repository)
        except DescriptorError:
            raise
        except Exception as err:
            log.warning("backend stat of %s failed: %s", digest, describe(err))
            raise BackendUnavailableError(f"backend failed: {describe(err)}") from err
        flight = self._inflight.get((digest, repository))
        if flight is not None and flight.write:
            try:
                await self.cache.set_descriptor(digest, desc, repository)
            except Exception as err:  # best effort: logged, never returned
                self.metrics.errors += 1
                self._cache_log.warning("cache write after a miss failed: %s", describe(err))
        return desc

    async def batch_stat(self, digests: Sequence[str], repository: str = "") -> list[Descriptor | DescriptorError]:
        """Stat each digest; a bad or unknown digest fails its item, not the call."""
        validate_repository(repository)
        if len(digests) > self.max_batch:
            raise BatchTooLargeError(f"{len(digests)} digests in one batch, at most {self.max_batch} allowed")
        stat_many = getattr(self.cache, "stat_many", None)
        if stat_many is None:
            results: list[Descriptor | DescriptorError] = []
            for digest in digests:
                try:
                    validate_digest(digest)
                    results.append(await self._stat(digest, repository))
                except DescriptorError as err:
                    results.append(err)
            return results
        return await self._batch_stat_many(stat_many, digests, repository)

    async def _batch_stat_many(
        self, stat_many: StatMany, digests: Sequence[str], repository: str
    ) -> list[Descriptor | DescriptorError]:
        """One cache call for the whole batch; the misses go to the backend concurrently."""
        n = len(digests)
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
            found = await stat_many(keys, repository) if keys else []
        except Exception as err:  # the cache failed: every lookup is an error and a miss
            metrics.errors += len(keys)
            self._cache_log.warning("cache stat_many failed, answering from the backend: %s", describe(err))
            found, cache_ok = [None] * len(keys), False
        # all(): a Descriptor is always true, and all() never calls its Python __eq__.
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
        if not _all_valid_lines(digests):
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

    # -- Clear ---------------------------------------------------------------------

    async def clear(self, digest: str, repository: str = "") -> None:
        validate_digest(digest)
        validate_repository(repository)
        if not self.delete_enabled:
            raise UnsupportedError("deletion is disabled (storage.delete.enabled is false)")
        if not self.backend.supports_clear(repository):
            scope = "repository scope" if repository else "global scope"
            raise UnsupportedError(f"the backend cannot clear in the {scope}")
        # A Stat in flight must not write back what is being cleared. A global Clear
        # also stops repository-scoped misses, which would set the global entry again.
        for (key_digest, key_repository), flight in self._inflight.items():
            if key_digest == digest and (not repository or key_repository in (repository, "")):
                flight.write = False
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
            raise
        except Exception as err:
            log.warning("backend clear of %s failed: %s", digest, describe(err))
            raise BackendUnavailableError(f"backend failed: {describe(err)}") from err
        if not held:
            raise BlobUnknownError.of(digest, repository)

    async def close(self) -> None:
        for closer in (getattr(self.cache, "close", None), self.backend.close):
            if closer is not None:
                try:
                    await closer()
                except Exception as err:  # closing must not mask shutdown
                    log.warning("close failed: %s", describe(err))


StatMany = Callable[[Sequence[str], str], Awaitable[list[Descriptor | None]]]

# A whole batch of valid digests, one per line, checked by one regex call.
_VALID_LINES = re.compile(r"(?:(?:sha256:[a-f0-9]{64}|sha384:[a-f0-9]{96}|sha512:[a-f0-9]{128})\n)*")


def _all_valid_lines(digests: Sequence[str]) -> bool:
    """True if every digest is valid (one C-level match instead of one per digest)."""
    joined = "\n".join(digests) + "\n"
    # Each digest adds one separator; a valid digest has no newline, so the counts
    # agree only when every line is exactly one digest.
    return joined.count("\n") == len(digests) and _VALID_LINES.fullmatch(joined) is not None
