"""Per-call state: the context variables a call carries, all in this one module.

grpc.aio runs the interceptors and then the handler of each call in the call's own
task, so a context variable set during a call holds that call's value only:

- the call's metadata, as the interceptor saw it (:func:`invocation_metadata`): the
  authorizer reads the bearer token from it instead of converting the metadata a second
  time with ``context.invocation_metadata()``;
- who is calling (:func:`set_principal` / :func:`current_principal`): an authorizer
  fills it once it has accepted a call (the static token's name, a registry token's
  subject), the call log reads it; ``""`` when no authorizer named one;
- the allowed audited call (:func:`set_audited` / :func:`take_audited`): what the
  authorizer accepted, for the audit line written when the call ends.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

#: The current call's (method name, metadata), as the interceptor saw them.
_call_metadata: ContextVar[tuple[str, Any] | None] = ContextVar("descriptor_call_metadata", default=None)

_principal: ContextVar[str] = ContextVar("descriptor_principal", default="")

#: The allowed audited call of the running task (the authorizer's record of it).
_audited: ContextVar[Any] = ContextVar("descriptor_audit_call", default=None)


def set_call_metadata(method: str, metadata: Any) -> None:
    """Record the metadata of the current call of ``method`` (the interceptor)."""
    _call_metadata.set((method, metadata))


def invocation_metadata(context: Any, method: str) -> Any:
    """The metadata of the current call of ``method`` (``Stat``): the interceptor's, else the context's."""
    seen = _call_metadata.get()
    if seen is not None and seen[0] == method:
        return seen[1]
    return context.invocation_metadata()


def set_principal(name: str) -> None:
    """Record who the current call is from (for its log line)."""
    _principal.set(name)


def current_principal() -> str:
    """The current call's principal, or ``""``."""
    return _principal.get()


def set_audited(call: Any) -> None:
    """Record the authorizer's accepted audited call, for the audit line at its end."""
    _audited.set(call)


def take_audited() -> Any:
    """The recorded audited call (None if none), clearing the slot."""
    call = _audited.get()
    _audited.set(None)
    return call


__all__ = [
    "current_principal",
    "invocation_metadata",
    "set_audited",
    "set_call_metadata",
    "set_principal",
    "take_audited",
]
