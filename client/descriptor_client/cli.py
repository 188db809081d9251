"""``descriptorctl``: the blob descriptor service from the command line (docs/client.md, descriptorctl).

    descriptorctl [--target HOST:PORT] [--token T] [--tls-ca F] [--tls-cert F] [--tls-key F] VERB

Verbs: ``stat``, ``set``, ``clear``, ``revalidate``, ``batch``, ``metrics``, ``health``. Defaults come
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
import queue
import sys
import threading
from collections.abc import Sequence
from typing import Any, TextIO

import grpc

from ._version import version
from ._wire import DEFAULT_TARGET, normalize_target
from .client import DescriptorClient
from .descriptor import Descriptor
from .errors import BatchTooLargeError, DescriptorError
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
    """A one-line count of answered digests on a terminal (stderr); nothing anywhere else.

    ``batch`` streams its input, so the total is not known in advance: the line shows
    how many digests have been answered so far, and is wiped at the end.
    """

    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled
        self.done = 0
        self.shown = False

    def update(self, done: int) -> None:
        self.done = done
        if not self.enabled:
            return
        self.stream.write(f"\r[batch] {done} answered")
        self.stream.flush()
        self.shown = True

    def clear(self) -> None:
        if self.enabled and self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False


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


def cmd_revalidate(client: DescriptorClient, args: argparse.Namespace) -> int:
    desc = client.revalidate(args.digest, args.repository)
    print(json.dumps(descriptor_json(desc)) if args.json else descriptor_line(desc))
    return EXIT_OK


#: How long ``batch`` waits for more stdin lines before sending what it has.
IDLE_SECONDS = 0.05
_EOF = object()


class DigestFeed:
    """Digests to send, one at a time: the arguments, or stdin read line by line.

    A reader thread takes stdin lines as they arrive, so a batch can be sent as soon as
    ``size`` digests are waiting or no new line came for :data:`IDLE_SECONDS`, and its
    answers printed while the producer on the other end of the pipe is still writing.
    Blank lines are skipped and surrounding space is ignored.
    """

    def __init__(self, digests: Sequence[str] | None, stream: TextIO) -> None:
        self.lines: queue.Queue[object] = queue.Queue()
        if digests:
            for digest in digests:
                self.lines.put(digest)
            self.lines.put(_EOF)
        else:
            threading.Thread(target=self._read, args=(stream,), daemon=True, name="stdin").start()
        self.ended = False

    def _read(self, stream: TextIO) -> None:
        try:
            for line in stream:
                if line.strip():
                    self.lines.put(line.strip())
        finally:
            self.lines.put(_EOF)

    def fill(self, pending: list[str], size: int) -> None:
        """Top ``pending`` up to ``size`` digests: block for the first, then wait only briefly."""
        while not self.ended and len(pending) < size:
            try:
                item = self.lines.get(timeout=IDLE_SECONDS if pending else None)
            except queue.Empty:
                return
            if item is _EOF:
                self.ended = True
            else:
                pending.append(str(item))


def print_result(digest: str, result: Descriptor | DescriptorError, as_json: bool) -> int:
    """Print one batch item; its exit status."""
    if isinstance(result, Descriptor):
        if as_json:
            print(json.dumps({"digest": digest, "descriptor": descriptor_json(result)}))
        else:
            print(f"{digest}\t{result.media_type}\t{result.size}")
        return EXIT_OK
    if as_json:
        print(json.dumps({"digest": digest, "error": error_json(result)}))
    else:
        print(f"{digest}\terror\t{result}")
    return exit_code(result.code)


def cmd_batch(client: DescriptorClient, args: argparse.Namespace) -> int:
    from_stdin = not args.digests
    feed = DigestFeed(args.digests, sys.stdin)
    progress = Progress(sys.stderr, from_stdin and sys.stderr.isatty())
    size = args.chunk
    worst = EXIT_OK
    pending: list[str] = []
    while True:
        feed.fill(pending, size)
        if not pending:
            break
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
            worst = max(worst, print_result(digest, result, args.json))
        sys.stdout.flush()
        del pending[: len(part)]
        if not feed.ended or pending:
            progress.update(progress.done + len(part))
    progress.clear()
    return worst


def cmd_metrics(client: DescriptorClient, args: argparse.Namespace) -> int:
    m = client.metrics()
    values = {"requests": m.requests, "hits": m.hits, "misses": m.misses, "errors": m.errors}
    if args.json:
        print(json.dumps({**values, "worker": m.worker, "workers": m.workers}))
    else:
        for name, value in values.items():
            print(f"{name}\t{value}")
        # With --workers each worker keeps its own counters: say whose these are.
        print(f"worker\t{m.worker} of {m.workers}" if m.workers > 1 else "worker\tthe whole server")
    return EXIT_OK


def cmd_health(client: DescriptorClient, args: argparse.Namespace) -> int:
    status = client.health(args.service)
    if args.json:
        print(json.dumps({"service": args.service, "status": status}))
    else:
        print(status)
    if status == "SERVICE_UNKNOWN":
        if not args.json:
            print(f"descriptorctl: service {args.service!r} is unknown to the server", file=sys.stderr)
        return EXIT_NOT_FOUND
    return EXIT_OK if status == "SERVING" else EXIT_UNAVAILABLE


VERBS = {
    "stat": cmd_stat,
    "set": cmd_set,
    "clear": cmd_clear,
    "revalidate": cmd_revalidate,
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


def _timeout(text: str) -> float | None:
    """Seconds; ``0`` means no deadline."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0:  # negative, or NaN
        raise argparse.ArgumentTypeError("must be >= 0 (0: no deadline)")
    return None if value == 0 else value


def add_connection_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """The options every verb shares. On the main parser they carry the defaults; the
    copies on each verb's parser have none (``SUPPRESS``), so an option given after the
    verb wins and one given before it is kept."""
    env = os.environ.get

    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument(
        "--target",
        default=default(env("DESCRIPTOR_TARGET") or DEFAULT_TARGET),
        help=f"HOST:PORT or gRPC target URI (default $DESCRIPTOR_TARGET, else {DEFAULT_TARGET})",
    )
    parser.add_argument(
        "--token", default=default(env("DESCRIPTOR_TOKEN") or None), help="bearer token ($DESCRIPTOR_TOKEN)"
    )
    parser.add_argument(
        "--tls-ca", default=default(env("DESCRIPTOR_TLS_CA") or None), help="CA certificate (PEM): use TLS"
    )
    parser.add_argument(
        "--tls-cert", default=default(env("DESCRIPTOR_TLS_CERT") or None), help="client certificate (mTLS)"
    )
    parser.add_argument("--tls-key", default=default(env("DESCRIPTOR_TLS_KEY") or None), help="client key (mTLS)")
    parser.add_argument("--tls-servername", default=default(None), help="expected server name (certificate override)")
    parser.add_argument(
        "--timeout", type=_timeout, default=default(10.0), help="deadline per call in seconds (10; 0: no deadline)"
    )
    parser.add_argument("--json", action="store_true", default=default(False), help="JSON output for scripts")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="descriptorctl",
        description="Call the blob descriptor service (descriptor.v1.BlobDescriptorService). "
        "The connection options may come before or after the verb.",
        epilog="exit status: 0 ok, 1 not found, 2 bad input, 3 unavailable, 4 denied, 5 other error",
    )
    parser.add_argument("--version", action="version", version=f"descriptorctl {version()}")
    add_connection_options(parser, defaults=True)

    # Verb-level copies of the connection options, so they may follow the verb too.
    common = argparse.ArgumentParser(add_help=False)
    add_connection_options(common, defaults=False)
    scoped = argparse.ArgumentParser(add_help=False)
    scoped.add_argument("--repository", "-r", default="", help="repository scope (default: global)")

    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    def verb(name: str, summary: str, details: str, parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
        return verbs.add_parser(
            name,
            parents=parents,
            help=summary,
            description=f"{summary[0].upper()}{summary[1:]}. {details}",
            epilog="exit status: 0 ok, 1 not found, 2 bad input, 3 unavailable, 4 denied, 5 other error",
        )

    p = verb(
        "stat",
        "the descriptor of a digest",
        "Prints DIGEST, media type and size separated by tabs (--json: one JSON object). "
        "With --repository the answer is the repository's; exit 1 when the blob is unknown there.",
        [common, scoped],
    )
    p.add_argument("digest")
    p = verb(
        "set",
        "prime the cache with a descriptor",
        "Writes to the service's cache only, never to its storage. DIGEST is the key; "
        "--descriptor-digest gives the canonical digest when DIGEST is an alias in another algorithm.",
        [common, scoped],
    )
    p.add_argument("digest")
    p.add_argument("--media-type", required=True)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--descriptor-digest", default="", help="the descriptor's canonical digest, when DIGEST is an alias")
    p = verb(
        "clear",
        "remove a digest from the cache and the backend",
        "Needs deletion enabled on the server (exit 5, UNSUPPORTED, otherwise). "
        "With --repository only that repository's link goes; exit 1 when nothing held the digest.",
        [common, scoped],
    )
    p.add_argument("digest")
    p = verb(
        "revalidate",
        "check a digest against the backend now: the cache follows (never deletes from the backend)",
        "The service asks its backend about DIGEST in the scope now; an entry the backend "
        "no longer has is removed from the cache as Clear would, and one it has is refreshed.",
        [common, scoped],
    )
    p.add_argument("digest")
    p = verb(
        "batch",
        "stat many digests (arguments, or one per line on stdin)",
        "One output line per digest, in order, printed as answers arrive. Digests go in BatchStat "
        "calls of --chunk at most, split further when the server's limit is lower. "
        "Exit status: the highest of the items'.",
        [common, scoped],
    )
    p.add_argument("digests", nargs="*", metavar="DIGEST")
    p.add_argument("--chunk", type=_positive, default=DEFAULT_CHUNK, help="digests per BatchStat call (%(default)s)")
    verb(
        "metrics",
        "the cached statter's counters",
        "requests, hits, misses and errors since the answering process started, and which "
        "worker answered (with --workers each worker counts alone; Prometheus has the sum).",
        [common],
    )
    p = verb(
        "health",
        "grpc.health.v1 status (exit 0 only when SERVING)",
        "Prints SERVING, NOT_SERVING (draining, or the backend fails its probe) or SERVICE_UNKNOWN (exit 1).",
        [common],
    )
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
    # health asks the server itself: without the channel's health watch, which leaves a
    # draining server (NOT_SERVING) and would answer UNAVAILABLE in its place.
    options = [("grpc.inhibit_health_checking", 1)] if args.verb == "health" else []
    return DescriptorClient(
        normalize_target(args.target), timeout=args.timeout, token=args.token, tls=tls, options=options
    )


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
