"""Who is calling: the principal slot an authorizer fills and the call log reads.

An authorizer calls :func:`set_principal` once it has accepted a call (the static token
authorizer with the token's name; a registry-token authorizer with the token's subject).
The slot is a context variable: grpc.aio runs each call in its own task, so it holds
that call's principal only, and ``""`` when no authorizer named one.
"""

from __future__ import annotations

from contextvars import ContextVar

_principal: ContextVar[str] = ContextVar("descriptor_principal", default="")


def set_principal(name: str) -> None:
    """Record who the current call is from (for its log line)."""
    _principal.set(name)


def current_principal() -> str:
    """The current call's principal, or ``""``."""
    return _principal.get()


__all__ = ["current_principal", "set_principal"]
