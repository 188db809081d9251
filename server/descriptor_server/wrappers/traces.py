"""Traces around the cache and backend: :class:`TracedCache` and :class:`TracedBackend`.

They implement the :class:`Cache` and :class:`Backend` protocols around the real
components (stacked by :func:`descriptor_server.wrappers.stack`): a child span per call
when tracing is on (set up by :mod:`descriptor_server.observability.tracing`); for the
backend also its request-duration histogram and one line when it is back after failing
(the cache's failure and return are logged by :class:`.watch.WatchedCache`, in the
same words)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from descriptor_client.descriptor import Descriptor
from descriptor_client.errors import BackendUnavailableError, DescriptorError

from ..core import loggers
from ..core.backend import Backend
from ..core.cache import Cache, Taken
from ..core.logutil import Recovery

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

log = logging.getLogger(loggers.SERVER)

T = TypeVar("T")

#: The backend hook: (operation, outcome, seconds); outcome is ok, unknown or error.
BackendObserver = Callable[[str, str, float], None]


class _Spans:
    """A child span around one component call, when tracing is on."""

    def __init__(self, tracer: Tracer, prefix: str, attributes: dict[str, str]) -> None:
        self.tracer = tracer
        self.prefix = prefix
        self.attributes = attributes

    async def run(self, operation: str, call: Callable[[], Awaitable[T]], **attributes: Any) -> T:
        from opentelemetry.trace import SpanKind, Status, StatusCode

        with self.tracer.start_as_current_span(
            f"{self.prefix}.{operation}",
            kind=SpanKind.INTERNAL,
            attributes={**self.attributes, **attributes},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                result = await call()
            except DescriptorError as err:
                span.set_attribute("descriptor.outcome", err.reason)
                if isinstance(err, BackendUnavailableError):
                    span.set_status(Status(StatusCode.ERROR, err.message))
                raise
            except Exception as err:
                span.set_attribute("descriptor.outcome", "error")
                span.record_exception(err)
                span.set_status(Status(StatusCode.ERROR, str(err) or type(err).__name__))
                raise
            span.set_attribute("descriptor.outcome", "ok")
            return result


class TracedCache:
    """A :class:`Cache` around another, with a child span per call (tracing on only).

    Other attributes (``client``, ``up``, ``capacity``...) are the inner cache's, but
    ``peek``: a hit the statter found by the inner cache's peek would have no span.
    """

    #: Not the inner cache's: every lookup goes through :meth:`stat` and its span.
    peek = None

    def __init__(self, inner: Cache, kind: str, tracer: Tracer) -> None:
        self.inner = inner
        self.kind = kind
        self._spans = _Spans(tracer, "cache", {"descriptor.cache": kind})

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]

    async def stat(self, digest: str, repository: str = "") -> Descriptor:
        return await self._spans.run(
            "stat", lambda: self.inner.stat(digest, repository), **{"descriptor.digest": digest}
        )

    async def stat_many(self, digests: Sequence[str], repository: str = "") -> list[Descriptor | None]:
        return await self._spans.run(
            "stat_many", lambda: self.inner.stat_many(digests, repository), **{"descriptor.digests": len(digests)}
        )

    async def set_descriptor(self, digest: str, descriptor: Descriptor, repository: str = "") -> None:
        await self._spans.run(
            "set_descriptor",
            lambda: self.inner.set_descriptor(digest, descriptor, repository),
            **{"descriptor.digest": digest},
        )

    async def token(self, fenced: Sequence[str] = ()) -> tuple[int, bool]:
        answer: tuple[int, bool] = await self._spans.run("token", lambda: self.inner.token(fenced))
        return answer

    async def fill(self, digest: str, descriptor: Descriptor, repository: str, token: int) -> bool:
        written: bool = await self._spans.run(
            "fill", lambda: self.inner.fill(digest, descriptor, repository, token), **{"descriptor.digest": digest}
        )
        return written

    async def invalidate(self, digest: str, repository: str = "") -> tuple[bool, int]:
        answer: tuple[bool, int] = await self._spans.run(
            "invalidate", lambda: self.inner.invalidate(digest, repository), **{"descriptor.digest": digest}
        )
        return answer

    async def clear(self, digest: str, repository: str = "") -> None:
        await self._spans.run("clear", lambda: self.inner.clear(digest, repository), **{"descriptor.digest": digest})

    async def restore(self, digest: str, taken: Taken, epoch: int) -> bool:
        restored: bool = await self._spans.run(
            "restore", lambda: self.inner.restore(digest, taken, epoch), **{"descriptor.digest": digest}
        )
        return restored

    async def lists(self, digest: str, repository: str) -> bool:
        """The inner cache's membership check, where it has one (a shared Redis)."""
        lists = getattr(self.inner, "lists", None)
        return False if lists is None else bool(await lists(digest, repository))

    async def settle(self, digest: str) -> None:
        await self._spans.run("settle", lambda: self.inner.settle(digest), **{"descriptor.digest": digest})

    async def close(self) -> None:
        await self.inner.close()


class TracedBackend:
    """A :class:`Backend` around another: spans, the request-duration hook, recovery lines.

    Outcomes: ``ok``; ``unknown`` (BLOB_UNKNOWN) and other contract answers such as
    UNSUPPORTED are answers of a working backend; ``error`` is any failure
    (BACKEND_UNAVAILABLE or an unexpected exception).
    """

    def __init__(
        self,
        inner: Backend,
        name: str,
        *,
        tracer: Tracer | None = None,
        observe: BackendObserver | None = None,
    ) -> None:
        self.inner = inner
        self.name = name
        self.observe = observe
        self._recovery = Recovery(log, f"backend {name}")
        self._spans = _Spans(tracer, "backend", {"descriptor.backend": name}) if tracer is not None else None

    async def _call(self, operation: str, call: Callable[[], Awaitable[T]], **attributes: Any) -> T:
        start = time.perf_counter()
        outcome = "error"
        try:
            if self._spans is not None:
                result = await self._spans.run(operation, call, **attributes)
            else:
                result = await call()
            outcome = "ok"
            return result
        except DescriptorError as err:
            if not isinstance(err, BackendUnavailableError):
                outcome = "unknown" if err.reason == "BLOB_UNKNOWN" else "refused"
            else:
                self._recovery.failed(err)
            raise
        except Exception as err:
            self._recovery.failed(err)
            raise
        finally:
            if outcome != "error":
                self._recovery.answered()
            if self.observe is not None:
                self.observe(operation, outcome, time.perf_counter() - start)

    async def stat(self, digest: str, repository: str = "") -> Descriptor:
        return await self._call("stat", lambda: self.inner.stat(digest, repository), **{"descriptor.digest": digest})

    async def set_descriptor(self, digest: str, descriptor: Descriptor, repository: str = "") -> None:
        await self._call(
            "set_descriptor",
            lambda: self.inner.set_descriptor(digest, descriptor, repository),
            **{"descriptor.digest": digest},
        )

    async def clear(self, digest: str, repository: str = "") -> None:
        await self._call("clear", lambda: self.inner.clear(digest, repository), **{"descriptor.digest": digest})

    def supports_clear(self, repository: str) -> bool:
        return self.inner.supports_clear(repository)

    async def probe(self) -> None:
        await self.inner.probe()

    async def close(self) -> None:
        await self.inner.close()


def innermost(component: Any) -> Any:
    """The real cache or backend inside any wrappers (``inner``), for scrape-time state."""
    while (inner := getattr(component, "__dict__", {}).get("inner")) is not None:
        component = inner
    return component


__all__ = ["BackendObserver", "TracedBackend", "TracedCache", "innermost"]
