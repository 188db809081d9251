"""Test support: distribution's on-disk layout, and the server started as a user starts it."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import yaml

A384 = "sha384:abc" + "1" * 93
A256 = "sha256:abc" + "1" * 61
OCT = "application/octet-stream"
REPO = "foo/bar"

T = TypeVar("T")

V2 = Path("docker") / "registry" / "v2"
READY = re.compile(r"listening on (\S+):(\d+)")


def digest_of(content: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, content).hexdigest()}"


class Layout:
    """Writes blobs and repository links exactly as distribution's filesystem driver does."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def blob_data(self, digest: str) -> Path:
        alg, hexpart = digest.split(":", 1)
        return self.root / V2 / "blobs" / alg / hexpart[:2] / hexpart / "data"

    def link(self, repository: str, digest: str) -> Path:
        alg, hexpart = digest.split(":", 1)
        return self.root / V2 / "repositories" / repository / "_layers" / alg / hexpart / "link"

    def put_blob(self, content: bytes, algorithm: str = "sha256") -> str:
        digest = digest_of(content, algorithm)
        path = self.blob_data(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        return digest

    def put_link(self, repository: str, digest: str, target: str | None = None) -> Path:
        path = self.link(repository, digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(target or digest)
        return path

    def push(self, repository: str, content: bytes) -> str:
        """A blob and its repository link, as a push leaves them."""
        digest = self.put_blob(content)
        self.put_link(repository, digest)
        return digest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port bound but not listening: connecting is refused while it is held.

    Unlike a port from :func:`free_port`, no other process can start listening on it
    meanwhile, so "nobody answers there" stays true for the whole test.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        yield port


def server_command() -> list[str]:
    return [sys.executable, "-m", "descriptor_server"]


def run_server_command(
    args: list[str], *, cwd: Path | None = None, env: Mapping[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the server command to completion (a refused start, --check-config), output captured.

    ``env`` replaces the environment when given (None inherits it).
    """
    return subprocess.run(
        [*server_command(), *args],
        cwd=cwd,
        env=None if env is None else dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def port_free(port: int) -> bool:
    """True if nothing holds ``port`` on loopback right now."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class ServerProcess:
    """``descriptor-server --config FILE`` as a subprocess; ``target`` once it is ready.

    ``command`` replaces the whole command line (``config`` may then be None): any
    server that logs ``listening on HOST:PORT`` when ready (the benchmarks' no-op
    servicer, a pinned service)."""

    def __init__(
        self,
        config: Mapping[str, Any] | None,
        workdir: Path,
        *,
        env: Mapping[str, str] | None = None,
        args: list[str] | None = None,
        command: list[str] | None = None,
    ) -> None:
        self.config_path = workdir / f"config-{id(self)}.yml"
        if config is not None:
            self.config_path.write_text(yaml.safe_dump(dict(config)))
        self.workdir = workdir
        self.env = {**os.environ, **(env or {})}
        self.args = args if args is not None else ["--config", str(self.config_path)]
        self.command = command
        self.proc: subprocess.Popen[str] | None = None
        self.target = ""
        self.port = 0
        self.lines: list[str] = []
        self._ready = threading.Event()

    def start(self, timeout: float = 30.0) -> ServerProcess:
        self.proc = subprocess.Popen(
            self.command if self.command is not None else [*server_command(), *self.args],
            cwd=self.workdir,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(timeout) or not self.port:
            self.stop()
            raise RuntimeError("server did not become ready:\n" + "".join(self.lines))
        return self

    def _read(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            m = READY.search(line)
            if m and not self.port:
                self.port = int(m.group(2))
                self.target = f"127.0.0.1:{self.port}"
                self._ready.set()
        self._ready.set()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


@contextmanager
def running_server(
    config: Mapping[str, Any], workdir: Path, *, env: Mapping[str, str] | None = None
) -> Iterator[ServerProcess]:
    server = ServerProcess(config, workdir, env=env).start()
    try:
        yield server
    finally:
        server.stop()


def base_config(root: Path, *, delete: bool = True, cache: str = "inmemory", **grpc: Any) -> dict[str, Any]:
    """A config serving ``root`` on a free loopback port (port 0: the server picks)."""
    return {
        "storage": {
            "filesystem": {"rootdirectory": str(root)},
            "cache": {"blobdescriptor": cache},
            "delete": {"enabled": delete},
        },
        "grpc": {"addr": "127.0.0.1:0", **grpc},
        "log": {"level": "info"},
    }


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(interval)


async def until(
    probe: Callable[[], Awaitable[T]], ok: Callable[[T], bool], timeout: float = 30.0, interval: float = 0.01
) -> T:
    """:func:`wait_for` in a coroutine: await ``probe()`` until ``ok`` accepts its value, and
    return that value; TimeoutError (with the last value) after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await probe()
        if ok(value):
            return value
        if loop.time() > deadline:
            raise TimeoutError(f"condition not met, last value {value!r}")
        await asyncio.sleep(interval)
