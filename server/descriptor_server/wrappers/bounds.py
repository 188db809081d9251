"""``BoundedBackend``: a deadline and a bounded queue in front of any backend.

A wrapper (BuildGrid style) implementing the Backend protocol around another
backend. Every backend call (Stat, Clear) takes one of
``max_inflight`` slots; a call that finds them all taken waits in a queue of at most
``max_pending``; a call beyond that is refused at once with UNAVAILABLE /
``BACKEND_UNAVAILABLE`` and counted in :attr:`BoundedBackend.shed_total`. Each call
has ``timeout`` seconds, waiting included; past it the caller gets
BACKEND_UNAVAILABLE and :attr:`timeouts_total` counts it. The health probe has
the deadline too, takes no slot, and is never run twice at once.

A call that timed out keeps its slot until the backend really answers. A thread-pool
backend (filesystem, s3) keeps a thread blocked on a hung mount whatever the caller
does, so freeing the slot early would only queue more work behind that thread: with
the slot kept, at most ``max_inflight`` reads are ever handed to the backend, and when
the mount comes back nothing abandoned is left to run. Memory under a hung backend is
therefore bounded by ``max_inflight + max_pending`` calls, never by what clients send.

Settings: ``storage.backendtimeout`` (0 = no deadline), ``storage.maxinflight``
(0 = no bound: the backend is not wrapped for it) and ``storage.maxpending``
(0 = no queue: a call that finds no free slot is refused at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from descriptor_client.descriptor import Descriptor
from descriptor_client.errors import BackendUnavailableError

from ..config import StorageConfig
from ..core import loggers
from ..core.backend import Backend
from ..core.logutil import RateLimitedLog

log = logging.getLogger(loggers.BOUNDS)

T = TypeVar("T")


class BackendTimeoutError(BackendUnavailableError):
    """A call that ran out of time. ``abandoned``: the backend call itself, still
    running (None if it never started), so that a caller whose outcome is unknown (a
    Clear) can act again when it really ends."""

    def __init__(self, message: str, abandoned: asyncio.Future[Any] | None = None) -> None:
        super().__init__(message)
        self.abandoned = abandoned


class BoundedBackend:
    """``inner`` with a per-call deadline, at most ``max_inflight`` calls in it, a bounded queue."""

    def __init__(self, inner: Backend, *, timeout: float = 0.0, max_inflight: int = 0, max_pending: int = 0) -> None:
        if timeout < 0 or max_inflight < 0 or max_pending < 0:
            raise ValueError("timeout, max_inflight and max_pending must be >= 0")
        self.inner = inner
        self.timeout = timeout
        self.max_inflight = max_inflight
        self.max_pending = max_pending
        #: Calls refused at once because the slots and the queue were full.
        self.shed_total = 0
        #: Calls that ran out of time (waiting for a slot, or in the backend).
        self.timeouts_total = 0
        #: Calls holding a slot now (including timed-out ones the backend has not answered).
        self.inflight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._probing: asyncio.Future[None] | None = None
        self._log = RateLimitedLog(log)

    @property
    def pending(self) -> int:
        """Calls waiting for a slot now."""
        return len(self._waiters)

    # -- slots ------------------------------------------------------------------------

    def _shed(self, verb: str) -> BackendUnavailableError:
        self.shed_total += 1
        msg = (
            f"backend overloaded: {self.inflight} calls in flight and {len(self._waiters)} waiting "
            f"(storage.maxinflight {self.max_inflight}, storage.maxpending {self.max_pending}); {verb} refused"
        )
        self._log.warning("%s", msg)
        return BackendUnavailableError(msg)

    async def _acquire(self, verb: str) -> None:
        if not self.max_inflight or (self.inflight < self.max_inflight and not self._waiters):
            self.inflight += 1
            return
        if len(self._waiters) >= self.max_pending:
            raise self._shed(verb)
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._release()  # the slot was handed over as we gave up: pass it on
            else:
                with contextlib.suppress(ValueError):  # already passed over by _release
                    self._waiters.remove(waiter)
            raise
        # The slot was handed over by _release (inflight already counts it).

    def _release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # hand the slot over: inflight unchanged
                return
        self.inflight -= 1

    def _released(self, task: asyncio.Future[Any]) -> None:
        self._release()
        if not task.cancelled():
            task.exception()  # retrieved: an abandoned call that failed never warns

    # -- the one path every call takes ----------------------------------------------

    async def _call(self, verb: str, make: Callable[[], Awaitable[T]]) -> T:
        timeout = self.timeout or None
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            async with asyncio.timeout(timeout):
                await self._acquire(verb)
        except TimeoutError:
            raise self._timed_out(verb) from None
        try:
            task: asyncio.Future[T] = asyncio.ensure_future(make())
        except BaseException:
            self._release()
            raise
        # The slot is held until the backend answers, not until the caller stops waiting.
        task.add_done_callback(self._released)
        remaining = None if timeout is None else max(0.0, timeout - (loop.time() - start))
        try:
            return await asyncio.wait_for(asyncio.shield(task), remaining)
        except TimeoutError:
            if task.done() and not task.cancelled() and task.exception() is None:
                return task.result()
            raise self._timed_out(verb, task) from None

    def _timed_out(self, verb: str, task: asyncio.Future[Any] | None = None) -> BackendTimeoutError:
        self.timeouts_total += 1
        msg = f"backend {verb} timed out after {self.timeout:g}s (storage.backendtimeout)"
        self._log.warning("%s", msg)
        return BackendTimeoutError(msg, task)

    # -- the Backend protocol ----------------------------------------------------------

    async def stat(self, digest: str, repository: str = "") -> Descriptor:
        return await self._call("Stat", lambda: self.inner.stat(digest, repository))

    async def set_descriptor(self, digest: str, descriptor: Descriptor, repository: str = "") -> None:
        await self.inner.set_descriptor(digest, descriptor, repository)  # never reaches storage

    async def clear(self, digest: str, repository: str = "") -> None:
        await self._call("Clear", lambda: self.inner.clear(digest, repository))

    def supports_clear(self, repository: str) -> bool:
        return self.inner.supports_clear(repository)

    async def probe(self) -> None:
        """The inner backend's probe, with the deadline; it takes no slot (a busy backend
        is not an unhealthy one), and at most one probe is in the backend at a time: while
        a probe has not answered (a hung mount), the next one fails at once instead of
        queueing behind it."""
        if self._probing is not None and not self._probing.done():
            raise BackendUnavailableError("backend probe still unanswered (storage hung?)")
        self._probing = task = asyncio.ensure_future(self.inner.probe())
        task.add_done_callback(_retrieve)
        try:
            await asyncio.wait_for(asyncio.shield(task), self.timeout or None)
        except TimeoutError:
            raise self._timed_out("probe") from None

    async def close(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.cancel()
        await self.inner.close()


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def bounded(inner: Backend, *, timeout: float, max_inflight: int, max_pending: int) -> Backend:
    """``inner`` wrapped when any bound is set, else ``inner`` itself."""
    if not timeout and not max_inflight:
        return inner
    return BoundedBackend(inner, timeout=timeout, max_inflight=max_inflight, max_pending=max_pending)


def from_config(inner: Backend, storage: StorageConfig) -> Backend:
    """``inner`` bounded by ``storage.backendtimeout``, ``storage.maxinflight`` and ``storage.maxpending``."""
    return bounded(
        inner, timeout=storage.backendtimeout, max_inflight=storage.maxinflight, max_pending=storage.maxpending
    )


__all__ = ["BackendTimeoutError", "BoundedBackend", "bounded", "from_config"]
