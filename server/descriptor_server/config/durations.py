"""Go-style durations (``500ms``, ``1m30s``) or numbers of seconds, and how they are shown."""

from __future__ import annotations

import math
import re
from typing import Any

from .error import ConfigError, _kind


class WrittenDuration(float):
    """A duration in seconds that remembers how the config wrote it (``1m30s``, ``500ms``, ``90``).

    It is the float everywhere; ``--check-config`` prints :attr:`written`.
    """

    __slots__ = ("written",)
    written: str | int | float

    def __new__(cls, seconds: float, written: str | int | float) -> WrittenDuration:
        self = super().__new__(cls, seconds)
        self.written = written
        return self

    def __reduce__(self) -> tuple[type[WrittenDuration], tuple[float, str | int | float]]:
        return (WrittenDuration, (float(self), self.written))


def format_duration(seconds: float) -> str:
    """A Go-style duration for a default that was not written (``30s``, ``500ms``, ``1m30s``).

    Exact: it parses back to the same number of seconds.
    """
    if seconds == 0:
        return "0s"
    if float(seconds).is_integer() and seconds >= 60:
        hours, rest = divmod(int(seconds), 3600)
        minutes, secs = divmod(rest, 60)
        return "".join(f"{n}{unit}" for n, unit in ((hours, "h"), (minutes, "m"), (secs, "s")) if n)
    if seconds < 1:
        ms = seconds * 1000
        if ms.is_integer() and parse_duration(f"{int(ms)}ms", "") == seconds:
            return f"{int(ms)}ms"
    text = f"{int(seconds)}s" if float(seconds).is_integer() else f"{float(seconds)!r}s"
    return text if "e" not in text else f"{float(seconds):.9f}".rstrip("0").rstrip(".") + "s"


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Any, path: str) -> float:
    """Seconds from a Go duration (``1s``, ``500ms``, ``1m30s``) or a number of seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        pos, seconds = 0, 0.0
        for m in _DURATION_PART.finditer(text):
            if m.start() != pos:
                break
            seconds += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if pos != len(text) or pos == 0:
            raise ConfigError(path, f"invalid duration {value!r} (want e.g. 500ms, 1s, 1m30s)")
    else:
        raise ConfigError(path, f"want a duration such as 1s, got {_kind(value)}")
    if not math.isfinite(seconds):
        raise ConfigError(path, f"want a finite duration, got {value!r}")
    if seconds < 0:
        raise ConfigError(path, "duration must not be negative")
    return seconds
