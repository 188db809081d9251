"""The one table of RPCs, derived from the generated file descriptor.

The service's full name, every method's name and its request and response classes
come from ``descriptor.proto`` itself (``services_by_name``); the only hand-written
facts are, per method, the access it needs and whether a client may retry it. The
server's handlers, metrics, call logs and access rules and both clients' method
tables read this table, so adding an RPC to the proto is one entry in ``_RULES``
plus its handler (a test fails when an RPC has no rule, no handler or no client verb).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ._proto.descriptor.v1 import descriptor_pb2 as pb

_SERVICE = pb.DESCRIPTOR.services_by_name["BlobDescriptorService"]

#: ``descriptor.v1.BlobDescriptorService``.
SERVICE: str = _SERVICE.full_name

#: What a static bearer token must grant: ``read`` (looks) or ``write`` (changes).
Access = Literal["read", "write"]

#: What a registry token's ``access`` claim must grant in the call's repository
#: (distribution's actions); None where the call names no repository.
Action = Literal["pull", "push", "delete"] | None


@dataclass(frozen=True, slots=True)
class Rpc:
    """One method of the service."""

    name: str
    request: type[Any]
    response: type[Any]
    access: Access
    action: Action
    #: Retried by the clients on any UNAVAILABLE. Every other call is retried only on
    #: ``SERVER_DRAINING``, which promises that the server did nothing.
    idempotent: bool
    #: The method's name in Python: the clients' verb and the servicer's handler.
    verb: str

    @property
    def path(self) -> str:
        """The HTTP/2 path of the method: ``/descriptor.v1.BlobDescriptorService/Stat``."""
        return f"/{SERVICE}/{self.name}"


#: Per method: (access, registry action, idempotent for retry, Python verb).
_RULES: dict[str, tuple[Access, Action, bool, str]] = {
    "Stat": ("read", "pull", True, "stat"),
    "SetDescriptor": ("write", "push", False, "set_descriptor"),
    "Clear": ("write", "delete", False, "clear"),
    "BatchStat": ("read", "pull", True, "batch_stat"),
    "GetMetrics": ("read", None, True, "metrics"),
    "Revalidate": ("read", "pull", True, "revalidate"),
}


def _table() -> dict[str, Rpc]:
    table: dict[str, Rpc] = {}
    for method in _SERVICE.methods:
        access, action, idempotent, verb = _RULES[method.name]  # KeyError: an RPC without a rule
        table[method.name] = Rpc(
            method.name,
            getattr(pb, method.input_type.name),
            getattr(pb, method.output_type.name),
            access,
            action,
            idempotent,
            verb,
        )
    return table


#: Method name -> :class:`Rpc`, in the proto's order.
RPCS: dict[str, Rpc] = _table()

__all__ = ["RPCS", "SERVICE", "Access", "Action", "Rpc"]
