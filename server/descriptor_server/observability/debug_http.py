"""The debug HTTP endpoint (``http.debug``): Prometheus metrics at one path, 404 elsewhere.

:class:`MetricsEndpoint` serves a registry on ``http.debug.addr`` at
``http.debug.prometheus.path`` only, from a daemon thread.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from ..config import ConfigError
from ..core import loggers

log = logging.getLogger(loggers.SERVER)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics endpoint: " + format, *args)


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _ThreadingWSGIServer6(_ThreadingWSGIServer):
    address_family = socket.AF_INET6


WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def path_only(
    path: str, app: WSGIApp | None, health_path: str = "", serving: Callable[[], bool] | None = None
) -> WSGIApp:
    """``app`` (the metrics) at exactly ``path``, the service's health at ``health_path``
    (200 ``SERVING`` or 503 ``NOT_SERVING``, for load balancers that cannot speak gRPC);
    404 for every other path. HEAD is answered as GET without the body."""

    def dispatch(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        at = environ.get("PATH_INFO", "")
        head = environ.get("REQUEST_METHOD") == "HEAD"
        if app is not None and at == path:
            if not head:
                return app(environ, start_response)
            for _ in app({**environ, "REQUEST_METHOD": "GET"}, start_response):
                pass  # the headers without the body
            return []
        if health_path and serving is not None and at == health_path:
            up = serving()
            text = b"SERVING\n" if up else b"NOT_SERVING\n"
            start_response(
                "200 OK" if up else "503 Service Unavailable",
                [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(text)))],
            )
            return [] if head else [text]
        served = [p for p in (path if app is not None else "", health_path) if p]
        missing = b"not found: this endpoint serves " + " and ".join(served).encode() + b"\n"
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [] if head else [missing]

    return dispatch


def split_hostport(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


class MetricsEndpoint:
    """The Prometheus endpoint: ``path`` on ``addr``, served from a daemon thread."""

    def __init__(
        self,
        registry: CollectorRegistry | None,
        addr: str,
        path: str,
        *,
        health_path: str = "",
        serving: Callable[[], bool] | None = None,
    ) -> None:
        self.registry = registry
        self.addr = addr
        self.path = path
        self.health_path = health_path
        self.serving = serving
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.host = ""
        self.port = 0

    def start(self) -> None:
        host, port = split_hostport(self.addr)
        cls = _ThreadingWSGIServer6 if ":" in host else _ThreadingWSGIServer
        metrics = make_wsgi_app(self.registry) if self.registry is not None else None
        app = path_only(self.path, metrics, self.health_path, self.serving)
        try:
            self._server = make_server(host, port, app, server_class=cls, handler_class=_QuietHandler)
        except OSError as err:
            raise ConfigError("http.debug.addr", f"cannot listen on {self.addr}: {err.strerror or err}") from None
        self.host, self.port = host, self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()
        shown = f"[{host}]" if ":" in host else host
        # Not "listening on": that phrase is the gRPC readiness line.
        if self.registry is not None:
            log.info("metrics endpoint at http://%s:%d%s", shown, self.port, self.path)
        if self.health_path and self.serving is not None:
            log.info("HTTP health at http://%s:%d%s", shown, self.port, self.health_path)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
