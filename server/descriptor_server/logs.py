"""Logs: the log set-up (``log.level``, ``log.formatter``) and one line per call.

- :func:`setup_logging` logs to stderr at ``log.level``, as text or JSON lines.
- :class:`CallLogger` (the servicer's ``observer`` hook, beside the metrics) writes one
  line per failed call at info, one per call at debug; never metadata, so never a token.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import grpc

from .config import LogConfig

call_log = logging.getLogger("descriptor_server.calls")


#: Longest digest or repository echoed into a log line (bad input can be anything).
MAX_LOGGED = 300


def _clip(value: str) -> str:
    return value if len(value) <= MAX_LOGGED else value[:MAX_LOGGED] + "..."


def call_fields(method: str, code: grpc.StatusCode, seconds: float, request: Any) -> dict[str, Any]:
    """What a call log line says: never metadata, so never a token."""
    fields: dict[str, Any] = {"method": method}
    if request is not None:
        if method == "BatchStat":
            fields["digests"] = len(request.digests)
        elif hasattr(request, "digest"):
            fields["digest"] = _clip(request.digest)
        if hasattr(request, "repository"):
            fields["repository"] = _clip(request.repository)
    fields["status"] = code.name
    fields["duration_ms"] = round(seconds * 1000, 3)
    return fields


#: Answers, not failures: BLOB_UNKNOWN is how "not cached, not stored" is said, and a
#: registry asks it before every upload, so it is logged at debug like OK.
ANSWERS = frozenset((grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND))


class CallLogger:
    """One line per failed call at info, one per call at debug."""

    def __init__(self, logger: logging.Logger = call_log) -> None:
        self.logger = logger

    def __call__(self, method: str, code: grpc.StatusCode, seconds: float, request: Any) -> None:
        level = logging.DEBUG if code in ANSWERS else logging.INFO
        if not self.logger.isEnabledFor(level):
            return
        fields = call_fields(method, code, seconds, request)
        # Values are JSON-quoted in the text form, so no input can forge a log line.
        text = " ".join(f"{k}={json.dumps(v)}" if isinstance(v, str) else f"{k}={v}" for k, v in fields.items())
        self.logger.log(level, "call %s", text, extra=fields)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with any ``extra=`` fields of the record."""

    _skip = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in self._skip})
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(config: LogConfig) -> None:
    """Log to stderr at ``log.level``, as text or JSON (``log.formatter``)."""
    handler = logging.StreamHandler(sys.stderr)
    if config.formatter == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    level = config.level.upper()
    root.setLevel("WARNING" if level == "WARN" else level)
    # Libraries' own debug chatter (event loop, gRPC core) is not the service's.
    for name in ("asyncio", "grpc"):
        logging.getLogger(name).setLevel(logging.INFO if root.level < logging.INFO else logging.NOTSET)
