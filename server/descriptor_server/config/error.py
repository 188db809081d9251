"""The one configuration error type, and how values are named in its messages."""

from __future__ import annotations

import sys
from typing import Any


class ConfigError(Exception):
    """A configuration problem: ``key`` is the dotted path, ``reason`` what is wrong."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}" if key else reason)
        self.key = key
        self.reason = reason

    def report(self) -> None:
        """The one line a refused start prints on stderr (the caller exits with status 2)."""
        print(f"descriptor-server: config error: {self}", file=sys.stderr, flush=True)


class ConfigErrors(ConfigError):
    """Several configuration problems found in one pass, reported together."""

    def __init__(self, errors: list[ConfigError]) -> None:
        first = errors[0]
        super().__init__(first.key, first.reason)
        self.errors = errors
        self.args = ("\n".join(str(e) for e in errors),)

    def report(self) -> None:
        """One line per problem, each as a single error's line."""
        for err in self.errors:
            err.report()


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
    }.get(type(value), type(value).__name__) + (
        f" {value!r}" if isinstance(value, int | float | str) and len(repr(value)) < 60 else ""
    )


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
