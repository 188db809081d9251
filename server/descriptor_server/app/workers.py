"""``--workers N`` / ``grpc.workers``: N server processes sharing one port (SO_REUSEPORT).

grpcio's Python servers run every handler under one GIL, so one process uses about
one core. With ``grpc.workers > 1`` the parent forks N workers *before* any gRPC
object exists; each runs its own grpc.aio server on ``grpc.addr`` with
``grpc.so_reuseport`` set, and the kernel spreads incoming connections over them.
Port ``0`` is resolved once in the parent (a bound, non-listening SO_REUSEPORT socket
holds it) so that every worker listens on the same port.

Each worker has its own statter: with the ``inmemory`` cache every worker has its own
cache (of ``blobdescriptorsize`` entries) and its own GetMetrics counters; a shared
``redis`` cache is shared. Only worker 0 serves ``http.debug`` and ``grpc.healthaddr``
(the other workers would collide on those addresses); its ``/metrics`` reports the
totals of all workers, which it reads from the others over Unix sockets in a private
directory (:mod:`.worker_metrics`). SIGTERM/SIGINT to the parent is forwarded to every
worker, each drains, and the parent exits with the worst status.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import socket
from collections.abc import Callable, Coroutine
from typing import Any

from ..config import Config, ConfigError
from ..core import loggers
from ..observability.logs import set_worker
from ..observability.worker_metrics import make_directory

log = logging.getLogger(loggers.SERVER)

Serve = Callable[[Config], Coroutine[Any, Any, None]]


@dataclasses.dataclass(frozen=True)
class WorkerInfo:
    """Which worker this process is: index, count, and the metrics sockets' directory."""

    index: int = 0
    count: int = 1
    metrics_dir: str = ""


#: This process's place (the default without ``--workers``; set in each forked worker).
current = WorkerInfo()


def _reserve_port(addr: str) -> tuple[str, socket.socket | None]:
    """``addr`` with port 0 replaced by a port held for the workers (and the holder)."""
    host, _, port = addr.rpartition(":")
    if port != "0":
        return addr, None
    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    holder = socket.socket(family, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        holder.bind((bare, 0))
    except OSError as err:
        holder.close()
        raise ConfigError("grpc.addr", f"cannot listen on {addr}: {err}") from None
    return f"{host}:{holder.getsockname()[1]}", holder


def worker_config(config: Config, index: int) -> Config:
    """The config of worker ``index``: only worker 0 keeps the side listeners."""
    if index == 0:
        return config
    grpc = dataclasses.replace(config.grpc, healthaddr="")
    debug = dataclasses.replace(config.http.debug, addr="")
    http = dataclasses.replace(config.http, debug=debug)
    return dataclasses.replace(config, grpc=grpc, http=http)


#: The signals the server handles (drain, drain, reload).
HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def hold_signals() -> None:
    """Hold the handled signals until :func:`release_signals`, from before start-up.

    Until a process has installed its handlers, a signal would take its default action
    (SIGTERM and SIGHUP kill, SIGINT raises KeyboardInterrupt anywhere). Blocked, it
    stays pending and is handled the moment the handlers are in place, as if it had
    come once running: SIGTERM/SIGINT drain, SIGHUP reloads. Forked workers and the
    threads started meanwhile inherit the block.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)


def release_signals() -> None:
    """Handle the held signals (and any that came while they were held)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED)


def metrics_directory(config: Config) -> str:
    """The workers' private metrics directory ("" without metrics), or a ConfigError."""
    debug = config.http.debug
    if not (debug.addr and debug.prometheus.enabled):
        return ""
    try:
        return make_directory()
    except OSError as err:  # no writable temporary directory (a read-only root file system)
        raise ConfigError(
            "http.debug.prometheus.enabled",
            f"with grpc.workers > 1 the workers' metrics need a private directory for their sockets, "
            f"and none could be made ({err}); point TMPDIR at a writable directory "
            f"(an emptyDir or tmpfs), or serve the metrics from one worker",
        ) from None


def check_metrics_directory(config: Config) -> None:
    """``--check-config --workers N``: refuse what start would (the directory is removed)."""
    path = metrics_directory(config)
    if path:
        shutil.rmtree(path, ignore_errors=True)


def run_workers(config: Config, serve: Serve) -> int:
    """Fork ``config.grpc.workers`` servers on one port; wait for all; the worst exit status."""
    global current
    addr, holder = _reserve_port(config.grpc.addr)
    config = dataclasses.replace(config, grpc=dataclasses.replace(config.grpc, addr=addr))
    metrics_dir = metrics_directory(config)
    pids: list[int] = []
    for index in range(config.grpc.workers):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child (covered by the workers test)
            code = 0
            current = WorkerInfo(index, config.grpc.workers, metrics_dir)
            set_worker(index)
            try:
                if holder is not None:
                    holder.close()
                asyncio.run(serve(worker_config(config, index)))
            except ConfigError as err:
                err.report()
                code = 2
            except KeyboardInterrupt:
                pass
            except BaseException:
                log.exception("worker %d failed", index)
                code = 1
            logging.shutdown()
            os._exit(code)
        pids.append(pid)
    log.info("started %d workers on %s: pids %s", len(pids), addr, " ".join(map(str, pids)))
    remaining = set(pids)

    def forward(signum: int, _frame: object) -> None:
        for child in remaining:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, forward)  # each worker re-reads its token keys
    # Held since before the fork (hold_signals): one that came meanwhile is forwarded
    # now, and each worker takes it once its own handlers are in place.
    release_signals()
    status = 0
    while remaining:
        child, raw = os.wait()
        if child not in remaining:  # pragma: no cover - not one of ours
            continue
        remaining.discard(child)
        code = os.waitstatus_to_exitcode(raw)
        if code != 0:  # one worker failed (e.g. could not listen): stop the others
            status = max(status, code if code > 0 else 1)
            forward(signal.SIGTERM, None)
    if holder is not None:
        holder.close()
    if metrics_dir:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return status
