"""``/metrics`` across ``--workers N``: worker 0's endpoint reports the totals of all workers.

The statter and RPC counters are plain ints read at scrape time (no cost on the hot
path), which prometheus-client's multiprocess mode cannot share. So worker 0's
endpoint asks its siblings instead: every other worker serves its own registry's
exposition text on a Unix socket in a private directory the parent made
(``worker-<i>.sock``, mode 0700), and a scrape of worker 0 reads them all and merges:

- counters, histograms and other gauges are summed (every worker's cache entries and
  capacity add up: with ``inmemory`` each worker has its own cache);
- ``process_*`` and ``python_*`` series stay per process, with a ``worker`` label;
- ``descriptor_build_info`` is 1, as in one process (every worker runs the same build);
- ``registry_storage_cache_redis_up`` is the lowest (0 if any worker's Redis is down),
  and ``*_created`` timestamps the earliest;
- ``descriptor_workers`` is the configured count, ``descriptor_workers_reporting`` how
  many answered this scrape (a sibling that does not answer within
  :data:`SIBLING_TIMEOUT` is left out of the totals, not waited for).

GetMetrics stays per worker: it answers the counters of the worker that served it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import socketserver
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from ..core import loggers

log = logging.getLogger(loggers.SERVER)

SIBLING_TIMEOUT = 2.0
PER_PROCESS = ("process_", "python_")
LOWEST = frozenset(("registry_storage_cache_redis_up",))
#: Facts about the build, the same in every worker: one value, not a sum (its help
#: says it is always 1).
SAME = frozenset(("descriptor_build_info",))


def socket_path(directory: str, index: int) -> str:
    return os.path.join(directory, f"worker-{index}.sock")


class _Handler(socketserver.BaseRequestHandler):
    server: _SiblingServer

    def handle(self) -> None:
        with contextlib.suppress(OSError):
            self.request.sendall(generate_latest(self.server.registry))


class _SiblingServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    registry: CollectorRegistry


class SiblingListener:
    """A worker's registry as exposition text on its Unix socket (workers 1..N-1)."""

    def __init__(self, registry: CollectorRegistry, directory: str, index: int) -> None:
        self.path = socket_path(directory, index)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self._server = _SiblingServer(self.path, _Handler)
        self._server.registry = registry
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-sibling", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def read_sibling(path: str, timeout: float = SIBLING_TIMEOUT) -> str | None:
    """The exposition text a sibling serves, or None when it does not answer."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(path)
            chunks = []
            while chunk := conn.recv(65536):
                chunks.append(chunk)
    except OSError:
        return None
    return b"".join(chunks).decode()


class WorkersCollector(Collector):
    """Worker 0's view: its own registry merged with every sibling's (see the module doc)."""

    def __init__(self, local: CollectorRegistry, directory: str, workers: int) -> None:
        self.local = local
        self.directory = directory
        self.workers = workers

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        texts = [(0, generate_latest(self.local).decode())]
        for index in range(1, self.workers):
            text = read_sibling(socket_path(self.directory, index))
            if text is None:
                log.debug("worker %d did not answer the metrics scrape", index)
                continue
            texts.append((index, text))
        merged = merge(texts)
        merged.append(GaugeMetricFamily("descriptor_workers", "Worker processes configured.", value=self.workers))
        merged.append(
            GaugeMetricFamily(
                "descriptor_workers_reporting",
                "Workers whose metrics are in this scrape's totals.",
                value=len(texts),
            )
        )
        return merged


def merge(texts: Iterable[tuple[int, str]]) -> list[Metric]:
    """Merge the exposition texts of several workers: ``(worker index, text)`` each."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for index, text in texts:
        for family in text_string_to_metric_families(text):
            per_process = family.name.startswith(PER_PROCESS)
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
                values[family.name] = {}
            into = values[family.name]
            for sample in family.samples:
                labels: dict[str, Any] = dict(sample.labels)
                if per_process:
                    labels["worker"] = str(index)
                key = (sample.name, tuple(sorted(labels.items())))
                if key not in into:
                    into[key] = sample.value
                elif family.name in LOWEST or sample.name.endswith("_created"):
                    into[key] = min(into[key], sample.value)
                elif family.name in SAME:
                    into[key] = max(into[key], sample.value)
                else:
                    into[key] += sample.value
    out = []
    for name, family in families.items():
        for (sample_name, label_pairs), value in values[name].items():
            family.add_sample(sample_name, dict(label_pairs), value)
        out.append(family)
    return out


def totals_registry(local: CollectorRegistry, directory: str, workers: int) -> CollectorRegistry:
    """The registry worker 0's endpoint serves: the totals of all workers."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkersCollector(local, directory, workers))
    return registry


def make_directory() -> str:
    """A private directory for the workers' sockets (the parent removes it at exit)."""
    import tempfile

    path = tempfile.mkdtemp(prefix="descriptor-metrics-")
    Path(path).chmod(0o700)
    return path


__all__ = ["SiblingListener", "WorkersCollector", "make_directory", "merge", "totals_registry"]
