"""Logs: the log set-up (``log.level``, ``log.formatter``, ``log.fields``) and one line per call.

- :func:`setup_logging` logs to stderr at ``log.level``, as text or JSON lines. Every
  line carries an RFC 3339 UTC timestamp with milliseconds (``2026-12-02T07:40:01.123Z``),
  the worker index (``worker``, 0 without ``--workers``; :func:`set_worker` in each worker)
  and the fixed ``log.fields``, as distribution's ``log.fields`` does.
- :class:`CallLogger` (the servicer's ``observer`` hook, beside the metrics) writes one
  line per failed call at info, one per call at debug, with the status code, the
  ``ErrorInfo`` reason, the peer address and the principal (:mod:`..rpc.context`); never
  metadata, so never a token.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import grpc

from ..config import LogConfig
from ..core import loggers

call_log = logging.getLogger(loggers.CALLS)


#: Longest digest or repository echoed into a log line (bad input can be anything).
MAX_LOGGED = 300


def _clip(value: str) -> str:
    return value if len(value) <= MAX_LOGGED else value[:MAX_LOGGED] + "..."


def call_fields(
    method: str,
    code: grpc.StatusCode,
    seconds: float,
    request: Any,
    *,
    context: Any = None,
    reason: str = "",
    principal: str = "",
) -> dict[str, Any]:
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
    if reason:
        fields["reason"] = reason
    fields["duration_ms"] = round(seconds * 1000, 3)
    if context is not None:
        fields["peer"] = context.peer()
    if principal:
        fields["principal"] = principal
    return fields


#: Answers, not failures: BLOB_UNKNOWN is how "not cached, not stored" is said, and a
#: registry asks it before every upload, so it is logged at debug like OK.
ANSWERS = frozenset((grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND))


class CallLogger:
    """One line per failed call at info, one per call at debug."""

    def __init__(self, logger: logging.Logger = call_log, *, principal: Callable[[], str] = lambda: "") -> None:
        self.logger = logger
        #: Who the current call is from (the server passes :func:`.rpc.context.current_principal`).
        self.principal = principal

    def __call__(
        self, method: str, code: grpc.StatusCode, seconds: float, request: Any, *, context: Any = None, reason: str = ""
    ) -> None:
        # ``is OK`` first: a StatusCode hashes in Python, and nearly every call ends OK.
        level = logging.DEBUG if code is grpc.StatusCode.OK or code in ANSWERS else logging.INFO
        if not self.logger.isEnabledFor(level):
            return
        fields = call_fields(method, code, seconds, request, context=context, reason=reason, principal=self.principal())
        # Values are JSON-quoted in the text form, so no input can forge a log line.
        text = " ".join(f"{k}={json.dumps(v)}" if isinstance(v, str) else f"{k}={v}" for k, v in fields.items())
        self.logger.log(level, "call %s", text, extra=fields)


#: The worker index every line carries (set in each worker by :func:`set_worker`).
_worker = 0
_workers = False


def set_worker(index: int) -> None:
    """Tag every later line of this process with worker ``index`` (text lines too)."""
    global _worker, _workers
    _worker, _workers = index, True


def rfc3339(created: float) -> str:
    """``created`` (seconds since the epoch) as RFC 3339 UTC with milliseconds."""
    moment = datetime.datetime.fromtimestamp(created, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, msg, worker, the fixed fields, extras."""

    _skip = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}

    def __init__(self, fields: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.fields = dict(fields or {})

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "worker": _worker,
        }
        for key, value in self.fields.items():
            out.setdefault(key, value)
        out.update({k: v for k, v in vars(record).items() if k not in self._skip and k not in ("time", "level")})
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """``<time> <LEVEL> <logger>: <message>``, then ``worker=N`` (with workers) and the fixed fields."""

    def __init__(self, fields: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.suffix = "".join(f" {k}={json.dumps(v)}" for k, v in (fields or {}).items())

    def format(self, record: logging.LogRecord) -> str:
        worker = f" worker={_worker}" if _workers else ""
        line = f"{rfc3339(record.created)} {record.levelname} {record.name}: {record.getMessage()}{worker}{self.suffix}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def audit_enabled(config: LogConfig, identified: bool) -> bool:
    """``log.audit``: ``on``, ``off``, or ``auto`` (on when calls carry an identity:
    token auth or mutual TLS, ``identified``)."""
    mode = getattr(config, "audit", "auto")
    return mode == "on" or (mode == "auto" and identified)


def setup_audit(config: LogConfig, identified: bool) -> None:
    """Turn the audit logger (``descriptor_server.audit``) on or off, as ``log.audit`` says."""
    logging.getLogger(loggers.AUDIT).setLevel(logging.INFO if audit_enabled(config, identified) else logging.WARNING)


#: A glog line of gRPC's C core: ``E0000 00:00:1733.123   123 file.cc:42] message``.
_GLOG = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ ([^\]\s]+)\] ?(.*)$")
_GLOG_LEVELS = {"I": "info", "W": "warning", "E": "error", "F": "critical"}


def json_line_of(line: str, fields: Mapping[str, str]) -> str:
    """``line`` as written to stderr, as a JSON log line: a JSON object stays as it is;
    anything else (gRPC's C core writes glog lines to the same stderr, a library may
    print) is wrapped, a glog line with its level and source."""
    if line.startswith("{"):
        return line
    out: dict[str, Any] = {"time": rfc3339(time.time()), "level": "error", "logger": "stderr", "msg": line}
    m = _GLOG.match(line)
    if m:
        out.update(level=_GLOG_LEVELS[m.group(1)], logger="grpc.core", msg=m.group(3), source=m.group(2))
    out["worker"] = _worker
    for key, value in fields.items():
        out.setdefault(key, value)
    return json.dumps(out)


_stderr_relay: threading.Thread | None = None


def relay_stderr_as_json(fields: Mapping[str, str]) -> None:
    """Make every line of this process's stderr (file descriptor 2) a JSON line.

    gRPC's C core logs through absl to file descriptor 2 directly (a failed TLS
    handshake from any scanner writes one), past Python's logging. In JSON mode the
    descriptor becomes a pipe read by a thread that passes JSON lines through and wraps
    the others (:func:`json_line_of`) on the real stderr. Forked workers inherit the
    pipe. At exit the pipe is closed and what is left in it is written.
    """
    global _stderr_relay
    if _stderr_relay is not None:
        return
    sys.stderr.flush()
    real = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    fixed = dict(fields)

    def relay() -> None:
        pending = b""
        with os.fdopen(real, "wb", buffering=0) as out:
            while True:
                chunk = os.read(read_end, 65536)
                if not chunk:
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                if lines:
                    text = "".join(json_line_of(x.decode("utf-8", "replace"), fixed) + "\n" for x in lines if x)
                    out.write(text.encode())
            if pending:
                out.write((json_line_of(pending.decode("utf-8", "replace"), fixed) + "\n").encode())
        os.close(read_end)

    _stderr_relay = threading.Thread(target=relay, name="stderr-json", daemon=True)
    _stderr_relay.start()
    pid = os.getpid()

    def finish() -> None:
        if os.getpid() != pid or _stderr_relay is None:
            return
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)  # the last writer of the pipe in this process
        os.close(null)
        _stderr_relay.join(2.0)

    atexit.register(finish)


def setup_logging(config: LogConfig) -> None:
    """Log to stderr at ``log.level``, as text or JSON (``log.formatter``), with ``log.fields``."""
    handler = logging.StreamHandler(sys.stderr)
    fields = getattr(config, "fields", None) or {}
    if config.formatter == "json":
        handler.setFormatter(JsonFormatter(fields))
        relay_stderr_as_json(fields)
    else:
        handler.setFormatter(TextFormatter(fields))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    level = config.level.upper()
    root.setLevel("WARNING" if level == "WARN" else level)
    # Libraries' own debug chatter (event loop, gRPC core) is not the service's.
    for name in ("asyncio", "grpc"):
        logging.getLogger(name).setLevel(logging.INFO if root.level < logging.INFO else logging.NOTSET)
