"""Traces and component health: OpenTelemetry set-up, and wrappers for the cache and backend.

- :func:`setup_tracing` reads the standard ``OTEL_*`` environment variables, as
  distribution v3 does: ``OTEL_TRACES_EXPORTER`` is ``otlp`` (OTLP over gRPC, to
  ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``),
  ``console`` (JSON to stdout) or ``none``, and none unless set; ``OTEL_SERVICE_NAME``
  defaults to ``descriptor-server``. With tracing off nothing is installed: no
  interceptor span, no wrapper span, no context lookup.
- :class:`TracedCache` and :class:`TracedBackend` implement the :class:`Cache` and
  :class:`Backend` protocols around the real components (applied in ``app.build_statter``):
  a child span per call when tracing is on; for the backend also its request-duration
  histogram and one line when it is back after failing (the cache's failure and
  return are logged by :class:`.cachehealth.WatchedCache`, in the same words).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from descriptor_client.descriptor import Descriptor
from descriptor_client.errors import BackendUnavailableError, DescriptorError

from .backends import Backend
from .caches import Cache, Taken
from .config import ConfigError
from .logutil import Recovery

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer

log = logging.getLogger("descriptor_server")

T = TypeVar("T")

#: The instrumentation scope of every span the server makes.
SCOPE = "descriptor_server"
DEFAULT_SERVICE_NAME = "descriptor-server"
EXPORTERS = ("otlp", "console", "none")

#: The backend hook: (operation, outcome, seconds); outcome is ok, unknown or error.
BackendObserver = Callable[[str, str, float], None]


class Tracing:
    """The tracer of one server process (``None`` when tracing is off) and its shutdown."""

    def __init__(self, tracer: Tracer | None = None, provider: TracerProvider | None = None) -> None:
        self.tracer = tracer
        self.provider = provider

    def shutdown(self) -> None:
        """Export what is buffered and stop the exporter (at drain)."""
        if self.provider is not None:
            self.provider.shutdown()
            self.provider = None


def check_tracing(environ: Mapping[str, str]) -> list[str]:
    """The exporters ``OTEL_TRACES_EXPORTER`` names (none: ``[]``); a bad value is a config error."""
    names = [n.strip() for n in environ.get("OTEL_TRACES_EXPORTER", "none").lower().split(",") if n.strip()]
    for name in names:
        if name not in EXPORTERS:
            raise ConfigError("OTEL_TRACES_EXPORTER", f"unknown exporter {name!r} (want one of {', '.join(EXPORTERS)})")
    names = [n for n in names if n != "none"]
    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"))
    if "otlp" in names and protocol != "grpc":
        raise ConfigError("OTEL_EXPORTER_OTLP_PROTOCOL", f"{protocol!r} is not supported here (want grpc)")
    return names


def setup_tracing(environ: Mapping[str, str]) -> Tracing:
    """The tracer ``OTEL_TRACES_EXPORTER`` asks for; off (``none``) unless set.

    Called in each serving process (after the fork with ``--workers``), since the SDK's
    batch exporter runs a thread.
    """
    names = check_tracing(environ)
    if not names:
        return Tracing()

    from opentelemetry import trace
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    attributes = {} if environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: DEFAULT_SERVICE_NAME}
    provider = TracerProvider(resource=Resource.create(attributes))
    for name in names:
        exporter: SpanExporter
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        else:
            exporter = ConsoleSpanExporter()
        provider.add_span_processor(BatchSpanProcessor(exporter))
    # Also the global provider, so libraries' own instrumentation (if any) joins the traces.
    trace.set_tracer_provider(provider)
    log.info("tracing on: exporter %s, service %s", ",".join(names), provider.resource.attributes.get(SERVICE_NAME))
    return Tracing(provider.get_tracer(SCOPE), provider)


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

    Other attributes (``client``, ``up``, ``capacity``...) are the inner cache's.
    """

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


__all__ = [
    "BackendObserver",
    "check_tracing",
    "TracedBackend",
    "TracedCache",
    "Tracing",
    "innermost",
    "setup_tracing",
]
