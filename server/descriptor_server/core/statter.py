"""The cached blob statter: a cache in front of a backend.

This is distribution's ``cachedBlobStatter`` as a service: Stat asks the cache, falls
back to the backend on a miss and fills the cache, counting requests, hits, misses
and errors. It validates every input before any cache or backend sees it, in the
service's order: key digest, repository, descriptor, deletion switch.

Clear is final, by one rule the cache keeps where it is shared (see
:mod:`descriptor_server.caches` and docs/reliability.md):

- every backend read on a miss takes a *token* (the cache's epoch) before it asks the
  backend, and writes its answer back only by compare-and-set against it
  (:meth:`~.caches.Cache.fill`): not if the digest, or the digest of its answer (an
  alias), was invalidated after the token was read;
- the misses that share a read (a *flight*) share its token: a Stat that reads a newer
  token (one that starts after a Clear returned) never joins a read that began before;
- Clear invalidates (bumps the epoch, fences the digest, removes the scope's entries),
  deletes from the backend, invalidates again (what a writer that ignores the fence put
  back meanwhile), waits until no near cache can answer the digest (``settle``), and
  only then returns OK;
- SetDescriptor writes by the same compare-and-set; while the digest is fenced (a Clear
  in the last ``fence_ttl`` seconds) it first checks the backend, and drops the write if
  the blob is gone, so a registry's upload commit that raced its own DELETE cannot put
  the deleted blob back;
- a Clear the backend refuses for certain puts back what it took only by
  compare-and-set (never over a concurrent Clear or SetDescriptor); one whose outcome is
  unknown (a timeout, a broken call) leaves the entries removed and the fence standing,
  says so, and invalidates again when the abandoned backend delete ends.

:meth:`CachedBlobStatter.revalidate` checks one entry against the backend, bypassing
the cache. Revalidation (``storage.cache.revalidate``) checks a hit on an entry due for it
before the hit is answered (:meth:`CachedBlobStatter._check`): a flight of its own per key
and token, so concurrent due hits share one backend read and a Clear that bumps the token
during the check wins (the check's write-back fails its compare-and-set).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from descriptor_client.descriptor import Descriptor, validate_descriptor
from descriptor_client.digest import all_valid, validate_digest, validate_repository
from descriptor_client.errors import (
    BackendUnavailableError,
    BatchTooLargeError,
    BlobUnknownError,
    DescriptorError,
    UnavailableError,
    UnsupportedError,
)

from . import loggers
from .backend import Backend
from .cache import Cache, Taken
from .logutil import RateLimitedLog, describe
from .revalidate import CHECK_WAIT, Revalidator

log = logging.getLogger(loggers.STATTER)

DEFAULT_MAX_BATCH = 1000
#: Digests (and, apart, repository names) remembered as valid (cleared when full).
VALID_MEMO_MAX = 16384

Key = tuple[str, str]  # (digest, repository)
FlightKey = tuple[str, str, int]  # (digest, repository, token)


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
    #: SetDescriptors checked against the backend (the digest was fenced, or a Clear
    #: bumped meanwhile), and those dropped (blob gone, or the check failed).
    set_checked: int = 0
    set_dropped: int = 0


@dataclass(eq=False)
class _Flight:
    """A backend Stat in flight, shared by every concurrent miss (or due hit: a check) on
    the same key and token."""

    token: int | None
    task: asyncio.Future[Descriptor] | None = None
    #: A check's deadline (loop time) for the hits waiting on it: past it they answer
    #: from the cache while the check goes on.
    answer_by: float = 0.0


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
        self._inflight: dict[FlightKey, _Flight] = {}
        #: Checks of entries due for revalidation, as ``_inflight`` for misses.
        self._checks: dict[FlightKey, _Flight] = {}
        #: Clears begun and ended in this process: the flight key of a read with no
        #: token (the cache failed), so a Stat after a Clear never joins one from before.
        self._clears = 0
        #: Write-backs under way per digest written (a Clear returns after them).
        self._filling: dict[str, list[asyncio.Future[None]]] = {}
        self._valid: set[str] = set()  # digests recently validated by Stat or BatchStat (bounded)
        self._valid_repositories: set[str] = set()  # the same for repository names
        self._cache_log = RateLimitedLog(log)
        self._background: set[asyncio.Future[None]] = set()
        #: The cache's synchronous lookup, where it has one (see :meth:`peek`).
        self._peek: Callable[[str, str], Descriptor | None] | None = getattr(cache, "peek", None)

    # -- Stat ------------------------------------------------------------------

    async def stat(self, digest: str, repository: str = "") -> Descriptor:
        self._validate(digest, repository)
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
            revalidator = self.revalidator
            if revalidator is not None and revalidator.due((digest, repository)):
                return await self._check(digest, repository, desc)
            return desc
        metrics.misses += 1
        token = await self._token() if cache_ok else None
        return await self._miss(digest, repository, token)

    def peek(self, digest: str, repository: str = "") -> Descriptor | None:
        """A Stat answered without a coroutine, or None: then :meth:`stat` answers it.

        The answer where the cache can give it synchronously (``cache.peek``: the
        in-memory cache's memoised hits) and the entry is not due for revalidation,
        validated and counted as :meth:`stat` counts a hit. None (nothing counted, and
        nothing changed that :meth:`stat` does not do again the same) for anything
        else: a cache without ``peek``, an answer it does not hold ready, a due entry
        (:meth:`stat` checks it against the backend first). An invalid digest or
        repository raises as :meth:`stat` does.
        """
        peek = self._peek
        if peek is None:
            return None
        self._validate(digest, repository)
        desc = peek(digest, repository)
        if desc is None:
            return None
        revalidator = self.revalidator
        if revalidator is not None and revalidator.due((digest, repository)):
            return None  # stat asks due() again: still due (it only grows due with time)
        metrics = self.metrics
        metrics.requests += 1
        metrics.hits += 1
        return desc

    async def _token(self) -> int | None:
        """The cache's epoch before a backend read; None (write nothing back) if the cache fails."""
        try:
            token, _ = await self.cache.token()
        except Exception as err:
            self.metrics.errors += 1
            self._cache_log.warning("cache token read failed, answering from the backend: %s", describe(err))
            return None
        return token

    def _miss(self, digest: str, repository: str, token: int | None) -> asyncio.Future[Descriptor]:
        """The backend answer for a miss, shared by every concurrent miss on the key with
        the same token (a newer token never joins an older read)."""
        key = self._flight_key(digest, repository, token)
        flight = self._inflight.get(key)
        if flight is None:
            flight = self._fly(self._inflight, key, token, self._fetch(token, digest, repository))
        assert flight.task is not None
        return asyncio.shield(flight.task)

    def _flight_key(self, digest: str, repository: str, token: int | None) -> FlightKey:
        return (digest, repository, token if token is not None else -1 - self._clears)

    def _fly(
        self, flights: dict[FlightKey, _Flight], key: FlightKey, token: int | None, read: Awaitable[Descriptor]
    ) -> _Flight:
        """Start ``read`` as the flight of ``key`` in ``flights`` (gone from it when it lands)."""
        flight = flights[key] = _Flight(token)
        # The read runs as its own task so that a caller that gives up (deadline,
        # cancellation) does not fail the other callers waiting on it.
        flight.task = task = asyncio.ensure_future(read)
        task.add_done_callback(lambda done: self._landed(flights, key, flight, done))
        return flight

    @staticmethod
    def _landed(
        flights: dict[FlightKey, _Flight], key: FlightKey, flight: _Flight, task: asyncio.Future[Descriptor]
    ) -> None:
        if flights.get(key) is flight:
            del flights[key]
        if not task.cancelled():
            task.exception()  # retrieved here, so an unawaited failure never warns

    async def _backend_stat(self, digest: str, repository: str) -> Descriptor:
        try:
            return await self.backend.stat(digest, repository)
        except DescriptorError:
            raise
        except Exception as err:
            log.warning("backend stat of %s failed: %s", digest, describe(err))
            raise BackendUnavailableError(f"backend failed: {describe(err)}") from err

    async def _fetch(self, token: int | None, digest: str, repository: str) -> Descriptor:
        desc = await self._backend_stat(digest, repository)
        await self._write_back(digest, desc, repository, token, "a miss")
        return desc

    async def _write_back(self, digest: str, desc: Descriptor, repository: str, token: int | None, after: str) -> None:
        """What the backend answered, written to the cache by compare-and-set against
        ``token`` (none: nothing), and confirmed if written. Best effort: logged, never raised."""
        if token is None:
            return
        try:
            written = await self._fill(digest, desc, repository, token)
        except Exception as err:
            self.metrics.errors += 1
            self._cache_log.warning("cache write after %s failed: %s", after, describe(err))
            return
        if written:
            self._confirmed(digest, repository)

    async def _fill(self, digest: str, desc: Descriptor, repository: str, token: int) -> bool:
        """``cache.fill``, registered under the digests it writes while it runs (a Clear of
        one of them returns only after it: on Cluster a fill may write, then take back)."""
        done = asyncio.get_running_loop().create_future()
        digests = (digest, desc.digest) if desc.digest != digest else (digest,)
        filling = self._filling
        for d in digests:
            filling.setdefault(d, []).append(done)
        try:
            return await self.cache.fill(digest, desc, repository, token)
        finally:
            done.set_result(None)
            for d in digests:
                waiting = filling.get(d)
                if waiting is not None:
                    waiting.remove(done)
                    if not waiting:
                        del filling[d]

    async def _fills_landed(self, digest: str) -> None:
        waiting = self._filling.get(digest)
        if waiting:
            await asyncio.gather(*(asyncio.shield(w) for w in list(waiting)))

    # -- Revalidate -----------------------------------------------------------------

    async def revalidate(self, digest: str, repository: str = "") -> Descriptor:
        """Check the entry for ``digest`` in this scope against the backend, bypassing the cache.

        Present: written back (compare-and-set, as a miss) and returned. Gone: invalidated
        with Clear's cache-side semantics (bump, fence, remove, settle), then
        BlobUnknownError. A backend failure: BackendUnavailableError, nothing changed.
        Never deletes from the backend, so needs neither deletion enabled nor more than
        pull access. As a repository Clear answering BLOB_UNKNOWN, a repository
        Revalidate of a digest the cache does not list there changes nothing anywhere:
        a caller with pull access to one repository cannot drop (or fence) the global
        entry other repositories are answered from. Never joins a read that began
        before the call (its caller has just seen storage change).
        """
        validate_digest(digest)
        validate_repository(repository)
        token = await self._token()
        try:
            desc = await self._backend_stat(digest, repository)
        except BlobUnknownError:
            await self._remove_gone(digest, repository)
            raise
        await self._write_back(digest, desc, repository, token, "a revalidation")
        return desc

    async def _remove_gone(self, digest: str, repository: str) -> bool:
        """The backend no longer holds ``digest`` in this scope: its entries go, with Clear's
        cache-side semantics. False if the cache does not list it in this repository
        (nothing anywhere changes); BackendUnavailableError if the cache fails."""
        cached = not repository or await self._cached(digest, repository)
        if cached:
            try:
                await self.cache.invalidate(digest, repository)
                await self.cache.settle(digest)
            except Exception as err:  # the key stays due (if it was): checked again
                self.metrics.errors += 1
                self._cache_log.warning("cache invalidation after a revalidation failed: %s", describe(err))
                raise BackendUnavailableError(
                    f"{digest} is gone from the backend, but the cache could not drop it: {describe(err)}"
                ) from err
        if self.revalidator is not None:
            self.revalidator.forget((digest, repository))
        return cached

    async def _check(self, digest: str, repository: str, cached: Descriptor) -> Descriptor:
        """A hit on an entry due for revalidation, checked against the backend before it
        is answered.

        Concurrent due hits of the key share one check (a flight, keyed by the token read
        here, before the backend: a hit that reads a newer token never joins a check that
        began before a Clear). Gone: BlobUnknownError, and the entry is removed. Present:
        the backend's answer, written back by compare-and-set (a Clear during the check
        wins). The backend failing, or not answering within ``CHECK_WAIT`` (the check
        goes on; what it finds still removes the entry), or over the rate limit: the
        cached answer, as a cache answers when storage is briefly down; the entry stays
        due, so the next hit checks again.
        """
        token = await self._token()
        key = self._flight_key(digest, repository, token)
        flight = self._checks.get(key)
        loop = asyncio.get_running_loop()
        if flight is None:
            assert self.revalidator is not None
            if not self.revalidator.allow():
                self.metrics.revalidation_skipped += 1
                return cached
            flight = self._fly(self._checks, key, token, self._recheck(token, digest, repository))
            flight.answer_by = loop.time() + CHECK_WAIT
        assert flight.task is not None
        try:
            return await asyncio.wait_for(asyncio.shield(flight.task), max(0.0, flight.answer_by - loop.time()))
        except BlobUnknownError:
            raise
        except Exception:  # failed, or not yet answered: not known gone
            return cached

    async def _recheck(self, token: int | None, digest: str, repository: str) -> Descriptor:
        """The check behind :meth:`_check` (one per flight)."""
        metrics = self.metrics
        metrics.revalidations += 1
        try:
            desc = await self._backend_stat(digest, repository)
        except BlobUnknownError:
            try:
                removed = await self._remove_gone(digest, repository)
            except BackendUnavailableError:  # known gone all the same; still due: checked again
                removed = False
            if removed:
                metrics.revalidation_removed += 1
                log.info(
                    "revalidation: %s is gone%s; removed from the cache",
                    digest,
                    f" from {repository}" * bool(repository),
                )
            raise
        except Exception:
            metrics.revalidation_failed += 1
            raise
        await self._write_back(digest, desc, repository, token, "a revalidation")
        return desc

    def _background_task(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._background.discard)

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
        found: Sequence[Descriptor | DescriptorError | None]
        cache_ok = True
        try:
            found = await self.cache.stat_many(keys, repository) if keys else []
        except Exception as err:  # the cache failed: every lookup is an error and a miss
            metrics.errors += len(keys)
            self._cache_log.warning("cache stat_many failed, answering from the backend: %s", describe(err))
            found, cache_ok = [None] * len(keys), False
        if self.revalidator is not None:
            found = await self._check_due(keys, found, repository)
        # all(): a Descriptor (or an error) is always true, and all() never calls its Python __eq__.
        if len(keys) == n and all(found):  # the common case: all valid, all cached
            metrics.hits += n
            return found  # type: ignore[return-value]  # no None in it
        # A digest repeated in the batch is fetched once; as if the batch ran in
        # order, a repeat counts as a hit when the first fetch answered and was cached.
        fetches: dict[str, asyncio.Future[Descriptor]] = {}
        token: int | None = None
        misses: list[tuple[int, str]] = []
        hits = 0
        for i, digest, desc in zip(positions, keys, found, strict=True):
            if desc is None:
                if digest not in fetches:
                    if not fetches and cache_ok:
                        token = await self._token()  # one read for the batch, before the backend
                    fetches[digest] = self._miss(digest, repository, token)
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

    async def _check_due(
        self, keys: Sequence[str], found: Sequence[Descriptor | DescriptorError | None], repository: str
    ) -> Sequence[Descriptor | DescriptorError | None]:
        """BatchStat's hits due for revalidation, checked before they are answered (as
        Stat's); an entry found gone answers its item BLOB_UNKNOWN."""
        assert self.revalidator is not None
        due = self.revalidator.due
        checks = {
            j: self._check(digest, repository, desc)
            for j, (digest, desc) in enumerate(zip(keys, found, strict=True))
            if isinstance(desc, Descriptor) and due((digest, repository))
        }
        if not checks:
            return found
        checked = list(found)
        for j, answer in zip(checks, await asyncio.gather(*checks.values(), return_exceptions=True), strict=True):
            if isinstance(answer, Descriptor | DescriptorError):
                checked[j] = answer
            else:
                raise answer
        return checked

    def _validate(self, digest: str, repository: str) -> None:
        """validate_digest and validate_repository, remembered: a digest and a repository
        seen valid before cost a set lookup each instead of a regular expression."""
        valid = self._valid
        if digest not in valid:
            validate_digest(digest)
            self._remember(valid, (digest,))
        if repository and repository not in self._valid_repositories:
            validate_repository(repository)
            self._remember(self._valid_repositories, (repository,))

    @staticmethod
    def _remember(valid: set[str], names: Sequence[str]) -> None:
        if len(valid) + len(names) > VALID_MEMO_MAX:
            valid.clear()
        valid.update(names)

    def _all_valid(self, digests: Sequence[str]) -> bool:
        """True if every digest is valid; digests seen valid before are found by one set call."""
        valid = self._valid
        if valid.issuperset(digests):
            return True
        if not all_valid(digests):
            return False
        self._remember(valid, digests)
        return True

    # -- SetDescriptor -------------------------------------------------------------

    async def set_descriptor(self, digest: str, descriptor: Descriptor, repository: str = "") -> None:
        """Write to the cache by compare-and-set; checked against the backend while fenced.

        The token and whether the digest (or its alias) is fenced are read in one round
        trip. Not fenced: written if no Clear bumped since. Fenced, or a Clear bumped
        meanwhile: the backend is asked (with a token read before); the blob gone, or the
        check failing, drops the write (the call still succeeds: the cache is best
        effort; logged and counted in ``set_dropped``).
        """
        validate_digest(digest)
        validate_repository(repository)
        validate_descriptor(digest, descriptor)
        digests = (digest, descriptor.digest) if descriptor.digest != digest else (digest,)
        try:
            token, fenced = await self.cache.token(digests)
            if not fenced and await self._fill(digest, descriptor, repository, token):
                self._confirmed(digest, repository)
                return
            token, _ = await self.cache.token()  # read before the backend is asked
        except Exception as err:  # the cache is best effort
            self.metrics.errors += 1
            self._cache_log.warning("cache set_descriptor failed: %s", describe(err))
            return
        self.metrics.set_checked += 1
        try:
            await self._backend_stat(digest, repository)
        except Exception as err:
            self.metrics.set_dropped += 1
            log.info(
                "SetDescriptor of %s%s dropped: %s was cleared lately and the backend %s",
                digest,
                f" in {repository}" * bool(repository),
                digest,
                "no longer holds it" if isinstance(err, BlobUnknownError) else f"check failed ({describe(err)})",
            )
            return
        try:
            written = await self._fill(digest, descriptor, repository, token)
        except Exception as err:
            self.metrics.errors += 1
            self._cache_log.warning("cache set_descriptor failed: %s", describe(err))
            return
        if written:
            self._confirmed(digest, repository)
        else:  # cleared again while the backend was asked
            self.metrics.set_dropped += 1
            log.info("SetDescriptor of %s dropped: cleared while the backend was checked", digest)

    def _confirmed(self, digest: str, repository: str) -> None:
        """The backend (or a SetDescriptor) vouched for ``digest`` in this scope: in a
        repository, for the global entry too (the write set it, and the blob exists)."""
        revalidator = self.revalidator
        if revalidator is not None:
            revalidator.confirmed((digest, repository))
            if repository:
                revalidator.confirmed((digest, ""))

    # -- Clear ---------------------------------------------------------------------

    async def clear(self, digest: str, repository: str = "") -> None:
        validate_digest(digest)
        validate_repository(repository)
        if not self.delete_enabled:
            raise UnsupportedError("deletion is disabled (storage.delete.enabled is false)")
        if not self.backend.supports_clear(repository):
            scope = "repository scope" if repository else "global scope"
            raise UnsupportedError(f"the backend cannot clear in the {scope}")
        # The Clear runs to its end even if its caller gives up (a deadline, a cancelled
        # call): stopped between the delete and the second invalidation it would leave
        # what a read wrote back meanwhile in the cache for good.
        task = asyncio.ensure_future(self._clear_to_the_end(digest, repository))
        self._background.add(task)
        task.add_done_callback(self._cleared)
        await asyncio.shield(task)

    def _cleared(self, task: asyncio.Future[None]) -> None:
        self._background.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a caller that gave up never warns

    async def _clear_to_the_end(self, digest: str, repository: str) -> None:
        self._clears += 1
        try:
            await self._clear(digest, repository)
        finally:
            self._clears += 1

    async def _cached(self, digest: str, repository: str) -> bool:
        """Whether the cache lists ``digest`` in ``repository`` (a failure: maybe).

        A cache shared with registries may hold a repository's membership of a digest
        without the entries a Stat needs (distribution 2.8's Clear leaves it): that is
        listed too, so a Clear answers OK and removes it (``lists``, where a cache has it)."""
        try:
            await self.cache.stat(digest, repository)
        except BlobUnknownError:
            lists = getattr(self.cache, "lists", None)
            if repository and lists is not None:
                try:
                    return bool(await lists(digest, repository))
                except Exception:
                    return True
            return False
        except Exception:
            return True  # cannot tell: invalidate first, as if it did
        return True

    async def _clear(self, digest: str, repository: str) -> None:
        cache = self.cache
        # A scope the cache does not hold the digest in: nothing to take before the
        # delete, so the backend is asked first, and a BLOB_UNKNOWN answer changes nothing
        # anywhere (no global drop, no fence). Otherwise the entries go first, so that a
        # delete of unknown outcome leaves none behind.
        first = await self._cached(digest, repository)
        held, epoch = False, 0
        taken: list[tuple[Descriptor, str]] = []
        if first:
            taken = await self._snapshot(digest, repository)
            try:
                held, epoch = await cache.invalidate(digest, repository)
            except Exception as err:
                # Refuse rather than clear the backend alone: a cache that comes back still
                # holding the entry would answer Stat for a deleted blob. The backend was not
                # asked, so the caller (a garbage collector) can simply retry.
                self.metrics.errors += 1
                self._cache_log.warning("cache invalidation failed, backend not asked: %s", describe(err))
                raise BackendUnavailableError(
                    f"cache failed, nothing was cleared (the backend was not asked; retry the Clear): {describe(err)}"
                ) from err
        try:
            await self.backend.clear(digest, repository)
            held = True
        except BlobUnknownError:
            pass
        except DescriptorError as err:
            if isinstance(err, UnavailableError):
                raise await self._unknown_outcome(digest, repository, err, first) from err
            if first:
                await self._restore(digest, taken, epoch)  # refused for certain: nothing changed
            raise
        except Exception as err:
            raise await self._unknown_outcome(digest, repository, err, first) from err
        if not held:
            raise BlobUnknownError.of(digest, repository)
        # The backend has deleted: invalidate again (what a read made between the first
        # invalidation and the delete wrote back, what a writer that ignores the fence
        # wrote), then wait until no near cache answers it. Either failing leaves the
        # deletion done but the cache unconfirmed: the Clear does not answer OK.
        self._clears += 1
        try:
            await cache.invalidate(digest, repository)
            await cache.settle(digest)
        except Exception as err:
            self.metrics.errors += 1
            self._cache_log.warning("cache invalidation after the backend deleted failed: %s", describe(err))
            raise BackendUnavailableError(
                f"{digest} was deleted from the backend, but the cache could not confirm that no process "
                f"answers it any more (retry the Clear): {describe(err)}"
            ) from err
        await self._fills_landed(digest)

    async def _unknown_outcome(
        self, digest: str, repository: str, err: Exception, invalidated: bool
    ) -> BackendUnavailableError:
        """The backend delete failed with an unknown outcome: the entries stay removed and
        the fence stands; when the abandoned delete ends, invalidate again."""
        log.warning("backend clear of %s failed, outcome unknown: %s", digest, describe(err))
        if not invalidated:  # the delete may have happened: what the cache holds goes now
            await self._invalidate_again(digest, repository, settle=True)
        abandoned = getattr(err, "abandoned", None)
        if isinstance(abandoned, asyncio.Future):
            abandoned.add_done_callback(
                lambda _: self._background_task(self._invalidate_again(digest, repository, settle=True))
            )
        return BackendUnavailableError(
            f"backend failed, the outcome is unknown (the blob may be deleted yet; its cache entries "
            f"stay removed): {describe(err)}"
        )

    async def _invalidate_again(self, digest: str, repository: str, *, settle: bool = False) -> None:
        """Invalidate once more now that the backend has deleted: a shared cache's fence
        then stands for its whole TTL from the deletion (however long the delete took), and
        anything written back meanwhile by a process that does not honour the fence (a
        distribution registry sharing the Redis) is removed."""
        self._clears += 1
        try:
            await self.cache.invalidate(digest, repository)
            if settle:
                await self.cache.settle(digest)
        except Exception as err:  # the deletion is done; the first invalidation emptied the cache
            self.metrics.errors += 1
            self._cache_log.warning("cache invalidation after the backend deleted failed: %s", describe(err))

    async def _snapshot(self, digest: str, repository: str) -> list[tuple[Descriptor, str]]:
        """What the cache holds that a Clear of this scope removes: (descriptor, scope),
        global entry first, so that :meth:`_restore` can put it back as it was."""
        taken: list[tuple[Descriptor, str]] = []
        for scope in ("", repository) if repository else ("",):
            try:
                taken.append((await self.cache.stat(digest, scope), scope))
            except Exception:  # unknown, or the cache fails (then its invalidation refuses too)
                continue
        return taken

    async def _restore(self, digest: str, taken: Taken, epoch: int) -> None:
        if not taken:
            return
        try:
            await self.cache.restore(digest, taken, epoch)
        except Exception as err:
            self.metrics.errors += 1
            self._cache_log.warning("cache restore after a refused clear failed: %s", describe(err))

    async def close(self) -> None:
        for component in (self.cache, self.backend):
            try:
                await component.close()
            except Exception as err:  # closing must not mask shutdown
                log.warning("close failed: %s", describe(err))
