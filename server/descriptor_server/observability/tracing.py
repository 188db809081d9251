"""Tracing set-up: OpenTelemetry from the standard ``OTEL_*`` environment variables.

:func:`setup_tracing` reads them as distribution v3 does: ``OTEL_TRACES_EXPORTER`` is
``otlp`` (OTLP over gRPC, to ``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), ``console`` (JSON to stdout) or ``none``, and
none unless set; ``OTEL_SERVICE_NAME`` defaults to ``descriptor-server``. With tracing
off nothing is installed: no interceptor span, no wrapper span, no context lookup. The
spans around the cache and backend are made by :mod:`descriptor_server.wrappers.traces`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..config import ConfigError
from ..core import loggers

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer

log = logging.getLogger(loggers.SERVER)

#: The instrumentation scope of every span the server makes.
SCOPE = "descriptor_server"
DEFAULT_SERVICE_NAME = "descriptor-server"
EXPORTERS = ("otlp", "console", "none")


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


__all__ = ["DEFAULT_SERVICE_NAME", "EXPORTERS", "SCOPE", "Tracing", "check_tracing", "setup_tracing"]
