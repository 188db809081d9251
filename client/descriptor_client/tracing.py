"""W3C trace context from the caller's OpenTelemetry span onto every call (optional).

When the ``opentelemetry-api`` package is installed (the ``tracing`` extra), the
clients add :func:`interceptors` to their channel: each call carries the current
context as ``traceparent`` (and ``tracestate`` / ``baggage``) metadata, through the
globally configured propagator, so the server's span joins the caller's trace. Without
the package, or with ``DESCRIPTOR_TRACE_PROPAGATION=0``, nothing is added and
``opentelemetry`` is never imported.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from typing import Any

import grpc


def enabled() -> bool:
    """Whether calls carry trace context: opentelemetry installed and not switched off."""
    if os.environ.get("DESCRIPTOR_TRACE_PROPAGATION", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    return importlib.util.find_spec("opentelemetry") is not None


def _with_context(details: Any) -> Any:
    from opentelemetry.propagate import inject

    carrier: dict[str, str] = {}
    inject(carrier)
    if not carrier:
        return details
    metadata = [*(details.metadata or ()), *carrier.items()]
    return details._replace(metadata=metadata)


class _SyncInterceptor(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def intercept_unary_unary(self, continuation: Callable[..., Any], client_call_details: Any, request: Any) -> Any:
        return continuation(_with_context(client_call_details), request)


class _AsyncInterceptor(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(_with_context(client_call_details), request)


def sync_interceptors() -> list[Any]:
    """The blocking client's interceptors (``[]`` when propagation is off)."""
    return [_SyncInterceptor()] if enabled() else []


def aio_interceptors() -> list[Any]:
    """The asyncio client's interceptors (``[]`` when propagation is off)."""
    return [_AsyncInterceptor()] if enabled() else []


__all__ = ["aio_interceptors", "enabled", "sync_interceptors"]
