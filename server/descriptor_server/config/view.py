"""The plain-data view ``--check-config`` prints: secrets masked, durations as written."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from .durations import WrittenDuration, format_duration
from .sections import DURATION, SECRET


def to_dict(config: Any, *, mask: bool = True) -> Any:
    """A plain-data view of a config, with secrets masked (for --check-config).

    A duration is shown as it was written (``1m30s`` stays ``1m30s``); a default one
    in Go's notation (``30s``).
    """
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        return config
    hints = typing.get_type_hints(type(config), include_extras=True)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        if f.metadata.get("internal"):
            continue
        value = getattr(config, f.name)
        marks = getattr(hints[f.name], "__metadata__", ())
        if mask and SECRET in marks and value:
            out[f.name] = "*****"
        elif isinstance(value, WrittenDuration):
            out[f.name] = value.written  # as the file or the environment wrote it
        elif DURATION in marks and isinstance(value, float):
            out[f.name] = format_duration(value)
        elif isinstance(value, list):
            out[f.name] = [to_dict(v, mask=mask) for v in value]
        elif value is None:
            continue
        else:
            out[f.name] = to_dict(value, mask=mask)
    return out
