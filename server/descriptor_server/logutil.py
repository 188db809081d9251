"""Small logging helpers shared by the statter, the caches and the backends.

- :class:`RateLimitedLog`: at most one warning per interval, saying how many were
  suppressed (a failing cache or backend must not flood the log at the call rate).
- :func:`describe`: an exception as one short line, ``Type: message``.
"""

from __future__ import annotations

import logging
import time


class RateLimitedLog:
    """Logs at most one line per ``interval`` seconds, saying how many were suppressed."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self.logger = logger
        self.interval = interval
        self._last = float("-inf")
        self._suppressed = 0

    def warning(self, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            self._suppressed += 1
            return
        if self._suppressed:
            msg += " (%d similar messages suppressed)"
            args = (*args, self._suppressed)
        self._last, self._suppressed = now, 0
        self.logger.warning(msg, *args)


def describe(err: BaseException) -> str:
    """``Type: message``, or the type alone when the message is empty."""
    text = str(err)
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


__all__ = ["RateLimitedLog", "describe"]
