"""``descriptorctl``: the blob descriptor service from the command line (README, descriptorctl).

    descriptorctl [--target HOST:PORT] [--token T] [--tls-ca F] [--tls-cert F] [--tls-key F] VERB

Verbs: ``stat``, ``set``, ``clear``, ``batch``, ``metrics``, ``health``. Defaults come
from ``DESCRIPTOR_TARGET`` (else ``127.0.0.1:5051``), ``DESCRIPTOR_TOKEN``,
``DESCRIPTOR_TLS_CA``, ``DESCRIPTOR_TLS_CERT`` and ``DESCRIPTOR_TLS_KEY``.

Exit status: 0 success, 1 not found, 2 bad input (INVALID_ARGUMENT or a usage error),
3 unavailable (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, no connection),
4 denied (UNAUTHENTICATED, PERMISSION_DENIED), 5 any other error (for example
UNIMPLEMENTED: deletion disabled). ``batch`` exits with the highest status of its
items (so 1 when some digest is unknown and none is worse).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

import grpc

from ._wire import DEFAULT_TARGET, call_metadata, normalize_target
from .client import DescriptorClient
from .descriptor import Descriptor
from .errors import BatchTooLargeError, DescriptorError, from_rpc_error
from .rpcs import SERVICE
from .tls import ClientTLS

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_BAD_INPUT = 2
EXIT_UNAVAILABLE = 3
EXIT_DENIED = 4
EXIT_OTHER = 5

EXIT_CODES: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: EXIT_OK,
    grpc.StatusCode.NOT_FOUND: EXIT_NOT_FOUND,
    grpc.StatusCode.INVALID_ARGUMENT: EXIT_BAD_INPUT,
    grpc.StatusCode.UNAVAILABLE: EXIT_UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: EXIT_UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED: EXIT_UNAVAILABLE,
    grpc.StatusCode.UNAUTHENTICATED: EXIT_DENIED,
    grpc.StatusCode.PERMISSION_DENIED: EXIT_DENIED,
}

DEFAULT_CHUNK = 500


def exit_code(code: grpc.StatusCode) -> int:
    return EXIT_CODES.get(code, EXIT_OTHER)


class UsageError(Exception):
    """Bad command-line input found after parsing (exit 2)."""


# -- output -------------------------------------------------------------------------------


def descriptor_json(desc: Descriptor) -> dict[str, Any]:
    return {"digest": desc.digest, "mediaType": desc.media_type, "size": desc.size}


def error_json(err: DescriptorError) -> dict[str, Any]:
    return {"code": err.code.name, "reason": err.reason, "message": err.message}


def descriptor_line(desc: Descriptor) -> str:
    return f"{desc.digest}\t{desc.media_type}\t{desc.size}"


class Progress:
    """A one-line progress bar on a terminal (stderr); nothing anywhere else."""

    WIDTH = 30

    def __init__(self, stream: TextIO, total: int, enabled: bool) -> None:
        self.stream = stream
        self.total = total
        self.enabled = enabled
        self.done = 0

    def update(self, done: int) -> None:
        self.done = done
        if not self.enabled:
            return
        filled = self.WIDTH * done // self.total if self.total else self.WIDTH
        pct = 100 * done // self.total if self.total else 100
        bar = "#" * filled + "." * (self.WIDTH - filled)
        self.stream.write(f"\r[{bar}] {done}/{self.total} {pct:3d}%")
        self.stream.flush()

    def clear(self) -> None:
        if self.enabled:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


# -- verbs --------------------------------------------------------------------------------


def cmd_stat(client: DescriptorClient, args: argparse.Namespace) -> int:
    desc = client.stat(args.digest, args.repository)
    print(json.dumps(descriptor_json(desc)) if args.json else descriptor_line(desc))
    return EXIT_OK


def cmd_set(client: DescriptorClient, args: argparse.Namespace) -> int:
    desc = Descriptor(args.media_type, args.descriptor_digest or args.digest, args.size)
    client.set_descriptor(args.digest, desc, args.repository)
    if args.json:
        print(json.dumps(descriptor_json(desc)))
    return EXIT_OK


def cmd_clear(client: DescriptorClient, args: argparse.Namespace) -> int:
    client.clear(args.digest, args.repository)
    return EXIT_OK


def read_digests(stream: TextIO) -> list[str]:
    """One digest per line; blank lines are skipped, surrounding space is ignored."""
    return [line.strip() for line in stream if line.strip()]


def chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def cmd_batch(client: DescriptorClient, args: argparse.Namespace) -> int:
    from_stdin = not args.digests
    digests: list[str] = read_digests(sys.stdin) if from_stdin else list(args.digests)
    size = args.chunk
    progress = Progress(sys.stderr, len(digests), from_stdin and len(digests) > size and sys.stderr.isatty())
    worst = EXIT_OK
    done = 0
    pending = list(digests)
    while pending:
        part = pending[:size]
        try:
            results = client.batch_stat(part, args.repository)
        except BatchTooLargeError:
            if size == 1:
                raise
            size = max(1, size // 2)  # the server's grpc.maxbatch is lower: split further
            continue
        progress.clear()
        for digest, result in zip(part, results, strict=True):
            if isinstance(result, Descriptor):
                if args.json:
                    print(json.dumps({"digest": digest, "descriptor": descriptor_json(result)}))
                else:
                    print(f"{digest}\t{result.media_type}\t{result.size}")
            else:
                worst = max(worst, exit_code(result.code))
                if args.json:
                    print(json.dumps({"digest": digest, "error": error_json(result)}))
                else:
                    print(f"{digest}\terror\t{result}")
        sys.stdout.flush()
        pending = pending[len(part) :]
        done += len(part)
        if pending:
            progress.update(done)
    progress.clear()
    return worst


def cmd_metrics(client: DescriptorClient, args: argparse.Namespace) -> int:
    m = client.metrics()
    values = {"requests": m.requests, "hits": m.hits, "misses": m.misses, "errors": m.errors}
    if args.json:
        print(json.dumps(values))
    else:
        for name, value in values.items():
            print(f"{name}\t{value}")
    return EXIT_OK


def cmd_health(client: DescriptorClient, args: argparse.Namespace) -> int:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stub = health_pb2_grpc.HealthStub(client._channel)
    try:
        resp = stub.Check(
            health_pb2.HealthCheckRequest(service=args.service),
            timeout=args.timeout,
            metadata=call_metadata(args.token),
        )
    except grpc.RpcError as err:
        raise from_rpc_error(err) from None
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    if args.json:
        print(json.dumps({"service": args.service, "status": status}))
    else:
        print(status)
    return EXIT_OK if resp.status == health_pb2.HealthCheckResponse.SERVING else EXIT_UNAVAILABLE


VERBS = {
    "stat": cmd_stat,
    "set": cmd_set,
    "clear": cmd_clear,
    "batch": cmd_batch,
    "metrics": cmd_metrics,
    "health": cmd_health,
}


# -- arguments ----------------------------------------------------------------------------


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="descriptorctl",
        description="Call the blob descriptor service (descriptor.v1.BlobDescriptorService).",
        epilog="exit status: 0 ok, 1 not found, 2 bad input, 3 unavailable, 4 denied, 5 other error",
    )
    parser.add_argument(
        "--target",
        default=env("DESCRIPTOR_TARGET") or DEFAULT_TARGET,
        help="HOST:PORT or gRPC target URI (default $DESCRIPTOR_TARGET, else %(default)s)",
    )
    parser.add_argument("--token", default=env("DESCRIPTOR_TOKEN") or None, help="bearer token ($DESCRIPTOR_TOKEN)")
    parser.add_argument("--tls-ca", default=env("DESCRIPTOR_TLS_CA") or None, help="CA certificate (PEM): use TLS")
    parser.add_argument("--tls-cert", default=env("DESCRIPTOR_TLS_CERT") or None, help="client certificate (mTLS)")
    parser.add_argument("--tls-key", default=env("DESCRIPTOR_TLS_KEY") or None, help="client key (mTLS)")
    parser.add_argument("--tls-servername", default=None, help="expected server name (certificate override)")
    parser.add_argument("--timeout", type=float, default=10.0, help="deadline per call in seconds (%(default)s)")
    parser.add_argument("--json", action="store_true", default=False, help="JSON output for scripts")

    # Verb-level copies of --json, so it may follow the verb as in the contract.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="JSON output")
    scoped = argparse.ArgumentParser(add_help=False)
    scoped.add_argument("--repository", "-r", default="", help="repository scope (default: global)")

    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    p = verbs.add_parser("stat", parents=[common, scoped], help="the descriptor of a digest")
    p.add_argument("digest")
    p = verbs.add_parser("set", parents=[common, scoped], help="prime the cache with a descriptor")
    p.add_argument("digest")
    p.add_argument("--media-type", required=True)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--descriptor-digest", default="", help="the descriptor's canonical digest, when DIGEST is an alias")
    p = verbs.add_parser("clear", parents=[common, scoped], help="remove a digest from the cache and the backend")
    p.add_argument("digest")
    p = verbs.add_parser(
        "batch",
        parents=[common, scoped],
        help="stat many digests (arguments, or one per line on stdin)",
        description="One output line per digest, in order. Exit status: the highest of the items'.",
    )
    p.add_argument("digests", nargs="*", metavar="DIGEST")
    p.add_argument("--chunk", type=_positive, default=DEFAULT_CHUNK, help="digests per BatchStat call (%(default)s)")
    verbs.add_parser("metrics", parents=[common], help="the cached statter's counters")
    p = verbs.add_parser("health", parents=[common], help="grpc.health.v1 status (exit 0 only when SERVING)")
    p.add_argument("--service", default=SERVICE, help='service to check ("" = the whole server; %(default)s)')
    return parser


def make_client(args: argparse.Namespace) -> DescriptorClient:
    tls: ClientTLS | None = None
    if args.tls_ca or args.tls_cert or args.tls_key:
        if bool(args.tls_cert) != bool(args.tls_key):
            raise UsageError("--tls-cert and --tls-key go together")
        try:
            tls = ClientTLS.from_files(args.tls_ca, args.tls_cert, args.tls_key, args.tls_servername)
        except OSError as err:
            raise UsageError(f"cannot read {err.filename}: {err.strerror}") from None
    return DescriptorClient(normalize_target(args.target), timeout=args.timeout, token=args.token, tls=tls)


def report(err: DescriptorError, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"error": error_json(err)}), file=sys.stderr)
    else:
        print(f"descriptorctl: {err}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # usage errors exit 2, --help 0
        return exit_.code if isinstance(exit_.code, int) else EXIT_BAD_INPUT
    try:
        with make_client(args) as client:
            return VERBS[args.verb](client, args)
    except UsageError as err:
        print(f"descriptorctl: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except DescriptorError as err:
        report(err, args.json)
        return exit_code(err.code)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output closed early (| head): not an error of ours
        sys.stderr.close()
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
