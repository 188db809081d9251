"""Small logging helpers shared by the statter, the caches and the backends.

- :class:`RateLimitedLog`: at most one warning per interval, saying how many were
  suppressed (a failing cache or backend must not flood the log at the call rate).
- :class:`Recovery`: a component's run of failures, logged once when it ends (and,
  if asked, once when it starts), for the cache and the backend alike.
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


class Recovery:
    """Counts a component's consecutive failed calls; one line when it answers again."""

    def __init__(self, logger: logging.Logger, what: str, *, warn_on_failure: bool = False) -> None:
        self.logger = logger
        self.what = what
        self.warn_on_failure = warn_on_failure
        self.failing_since: float | None = None
        self.failed_calls = 0

    @property
    def failing(self) -> bool:
        return self.failing_since is not None

    def failed(self, err: BaseException) -> None:
        self.failed_calls += 1
        if self.failing_since is None:
            self.failing_since = time.monotonic()
            if self.warn_on_failure:
                self.logger.warning("%s failing: %s", self.what, describe(err))

    def answered(self) -> None:
        if self.failing_since is not None:
            self.logger.info(
                "%s is back after failing for %.1fs (%d failed calls)",
                self.what,
                time.monotonic() - self.failing_since,
                self.failed_calls,
            )
            self.failing_since, self.failed_calls = None, 0


def describe(err: BaseException) -> str:
    """``Type: message``, or the type alone when the message is empty."""
    text = str(err)
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


__all__ = ["RateLimitedLog", "Recovery", "describe"]
