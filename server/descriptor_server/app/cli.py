"""The command line: ``descriptor-server`` (and ``python -m descriptor_server``).

With no arguments it serves the embedded default: in-memory cache, filesystem backend
under ``./data``, on ``127.0.0.1:5051``. ``--check-config FILE`` validates and prints
the effective config; ``--workers N`` serves from N processes. A bad configuration is
reported here, in one place, with exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence

import yaml

from .. import security
from ..config import Config, ConfigError, as_written, check_workers, load, to_dict
from ..core import loggers
from ..observability.logs import setup_audit, setup_logging
from ..observability.tracing import check_tracing
from . import workers
from .composition import check_components
from .server import serve
from .version import VersionAction

log = logging.getLogger(loggers.SERVER)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="descriptor-server",
        description="Serve the blob descriptor service (descriptor.v1.BlobDescriptorService) over gRPC.",
    )
    parser.add_argument("--version", action=VersionAction, help="print the version and build information, and exit")
    parser.add_argument("--config", metavar="FILE", help="YAML configuration (distribution-shaped)")
    parser.add_argument(
        "--check-config",
        metavar="FILE",
        help="validate FILE, print the effective config (secrets masked) and exit",
    )
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="serve from N processes sharing the port with SO_REUSEPORT (overrides grpc.workers)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except ConfigError as err:  # the one place a config error is reported
        err.report()
        return 2


def run(args: argparse.Namespace) -> int:
    """Check or serve, as ``args`` say; a bad configuration raises :class:`ConfigError`."""
    config = load(args.check_config or args.config)
    try:
        return _run(args, config)
    except ConfigError as err:  # found at start (a cache, a listener): named as written
        raise as_written(err, config.deprecated) from None


def _run(args: argparse.Namespace, config: Config) -> int:
    security.check_files(config)
    check_tracing(os.environ)
    warning = config.deprecation_warning()
    if args.workers is not None:  # --check-config checks what --workers would serve
        if args.workers < 1:
            raise ConfigError("grpc.workers", "must be >= 1 (--workers)")
        config = dataclasses.replace(config, grpc=dataclasses.replace(config.grpc, workers=args.workers))
        check_workers(config)
    if args.check_config:
        if warning:
            print(f"descriptor-server: {warning}", file=sys.stderr, flush=True)
        asyncio.run(check_components(config))
        if config.grpc.workers > 1:
            workers.check_metrics_directory(config)
        print(yaml.safe_dump(to_dict(config), sort_keys=False), end="")
        return 0
    setup_logging(config.log)
    auth = config.auth
    # log.audit auto: on when calls carry an identity (tokens, or mutual TLS).
    setup_audit(config.log, bool(auth.tokens or auth.tokensfile or auth.token is not None or config.grpc.tls.clientcas))
    if warning:
        log.warning("%s", warning)  # once, before any worker starts
    workers.hold_signals()  # until the handlers are in place (serve, run_workers)
    if config.grpc.workers > 1:
        return workers.run_workers(config, serve)
    with contextlib.suppress(KeyboardInterrupt):  # signal handlers catch SIGINT
        asyncio.run(serve(config))  # ends the process once drained (server.end_process)
    return 0


__all__ = ["main", "parse_args", "run"]
