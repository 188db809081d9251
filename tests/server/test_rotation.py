"""Certificates and tokens rotate without a restart (docs/deploy.md, "Rotating certificates and tokens").

The server certificate, key and client CAs (``grpc.tls``) and the static tokens file
(``auth.tokensfile``) are re-read when their files change and on SIGHUP. The files live
in a directory laid out as the kubelet lays out a Secret volume (each key a symlink
through ``..data``, swapped in one rename), which is how cert-manager's renewals reach a
pod. Under load, a renewal fails no call: connections open keep their handshake's
certificate, new handshakes get the new one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from cryptography import x509
from descriptor_client import ClientTLS, DescriptorClient, UnauthenticatedError
from descriptor_server.security import RELOAD_INTERVAL, token_hash
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers.pki import CA, Issued
from helpers.support import Layout, ServerProcess, base_config


class SecretVolume:
    """A directory as the kubelet writes a Secret volume: ``<key> -> ..data/<key>``,
    ``..data -> ..<generation>``; an update writes a new generation and swaps ``..data``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir()
        self.generation = 0

    def write(self, files: dict[str, bytes]) -> None:
        self.generation += 1
        gen = self.root / f"..gen{self.generation}"
        gen.mkdir()
        for name, data in files.items():
            (gen / name).write_bytes(data)
        tmp = self.root / "..data_tmp"
        os.symlink(gen.name, tmp)
        os.replace(tmp, self.root / "..data")  # the one atomic switch
        for name in files:
            link = self.root / name
            if not link.is_symlink():
                os.symlink(f"..data/{name}", link)
        for old in self.root.glob("..gen*"):
            if old != gen:
                for f in old.iterdir():
                    f.unlink()
                old.rmdir()

    def path(self, name: str) -> str:
        return str(self.root / name)


def tls_files(issued: Issued) -> dict[str, bytes]:
    return {"tls.crt": issued.cert.read_bytes(), "tls.key": issued.key.read_bytes()}


def serial_of(issued: Issued) -> int:
    return x509.load_pem_x509_certificate(issued.cert.read_bytes()).serial_number


def served_serial(port: int, ca: CA, client: Issued | None = None) -> int:
    """The serial number of the certificate a new TLS handshake with the server gets."""
    context = ssl.create_default_context(cafile=str(ca.pem))
    context.set_alpn_protocols(["h2"])
    if client is not None:
        context.load_cert_chain(str(client.cert), str(client.key))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as sock,
        context.wrap_socket(sock, server_hostname="127.0.0.1") as conn,
    ):
        der = conn.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def eventually(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until ``check()`` holds (polled), or fail naming ``what``."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, f"{what} not within {timeout} s"
        time.sleep(0.1)
    return time.monotonic() - started


class Load:
    """Threads calling health Check on the TLS port without retries: half on one channel
    kept open, half each on a new channel (a new TLS handshake) every few calls."""

    def __init__(self, target: str, ca: CA, client: Issued | None = None, threads: int = 4) -> None:
        self.target = target
        key = client.key.read_bytes() if client else None
        chain = client.cert.read_bytes() if client else None
        self.credentials = grpc.ssl_channel_credentials(ca.pem.read_bytes(), key, chain)
        self.calls = 0
        self.failures: list[str] = []
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(i % 2 == 0,), daemon=True) for i in range(threads)]
        for t in self.threads:
            t.start()

    def run(self, reconnect: bool) -> None:
        while not self.stopping.is_set():
            with grpc.secure_channel(self.target, self.credentials) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                for _ in range(5 if reconnect else 10**9):
                    if self.stopping.is_set():
                        return
                    try:
                        status = stub.Check(health_pb2.HealthCheckRequest(), timeout=30).status
                        ok = status == health_pb2.HealthCheckResponse.SERVING
                        error = "" if ok else f"status {status}"
                    except grpc.RpcError as err:
                        error = f"{err.code()}: {err.details()}"
                    with self.lock:
                        self.calls += 1
                        if error:
                            self.failures.append(error)

    def stop(self) -> tuple[int, list[str]]:
        self.stopping.set()
        for t in self.threads:
            t.join(30)
        return self.calls, self.failures


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return Layout(tmp_path / "registry")


@contextlib.contextmanager
def serving(config: dict[str, Any], workdir: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(config, workdir).start()
    try:
        yield proc
    finally:
        proc.stop()


def test_a_certificate_renewed_under_load_fails_no_call(tmp_path: Path, layout: Layout) -> None:
    ca = CA(tmp_path, "ca")
    volume = SecretVolume(tmp_path / "tls")
    first = ca.issue("server-1", ips=("127.0.0.1",))
    volume.write(tls_files(first))
    config = base_config(layout.root)
    config["grpc"]["tls"] = {"certificate": volume.path("tls.crt"), "key": volume.path("tls.key")}
    with serving(config, tmp_path) as proc:
        port = int(proc.target.rsplit(":", 1)[1])
        assert served_serial(port, ca) == serial_of(first)
        load = Load(proc.target, ca)
        try:
            eventually(lambda: load.calls > 50, 30, "calls before the renewal")
            # A renewal written as cert-manager's Secret update reaches the pod: noticed at
            # a handshake after the next check (at most RELOAD_INTERVAL s).
            second = ca.issue("server-2", ips=("127.0.0.1",))
            volume.write(tls_files(second))
            took = eventually(lambda: served_serial(port, ca) == serial_of(second), RELOAD_INTERVAL + 10, "renewal")
            assert took <= RELOAD_INTERVAL + 5
            # SIGHUP: at once.
            third = ca.issue("server-3", ips=("127.0.0.1",))
            volume.write(tls_files(third))
            proc.signal(signal.SIGHUP)
            assert eventually(lambda: served_serial(port, ca) == serial_of(third), 8, "renewal on SIGHUP") < 8
            # Half a rotation (the new certificate, the old key) is refused: the last good
            # pair stays in force, and the next good one is taken.
            fourth = ca.issue("server-4", ips=("127.0.0.1",))
            volume.write({"tls.crt": fourth.cert.read_bytes(), "tls.key": third.key.read_bytes()})
            proc.signal(signal.SIGHUP)
            eventually(lambda: "TLS certificate not reloaded (SIGHUP)" in proc.output, 8, "the refusal logged")
            assert "is not the key of" in proc.output
            assert served_serial(port, ca) == serial_of(third)
            volume.write(tls_files(fourth))
            proc.signal(signal.SIGHUP)
            eventually(lambda: served_serial(port, ca) == serial_of(fourth), 8, "the repaired renewal")
            before = load.calls
            eventually(lambda: load.calls > before + 50, 30, "calls after the renewals")
        finally:
            calls, failures = load.stop()
        assert failures == [], f"{len(failures)} of {calls} calls failed: {failures[:5]}"
        assert "reloaded (files changed)" in proc.output
        assert "reloaded (SIGHUP)" in proc.output


def test_client_cas_rotate(tmp_path: Path, layout: Layout) -> None:
    """mTLS: a client CA added to the bundle is trusted after SIGHUP, without a restart."""
    ca = CA(tmp_path, "ca")
    old_clients, new_clients = CA(tmp_path, "clients-old"), CA(tmp_path, "clients-new")
    server = ca.issue("server", ips=("127.0.0.1",))
    old_client = old_clients.issue("old-client", client=True)
    new_client = new_clients.issue("new-client", client=True)
    volume = SecretVolume(tmp_path / "tls")
    volume.write({**tls_files(server), "ca.crt": old_clients.pem.read_bytes()})
    config = base_config(layout.root)
    config["grpc"]["tls"] = {
        "certificate": volume.path("tls.crt"),
        "key": volume.path("tls.key"),
        "clientcas": [volume.path("ca.crt")],
    }

    def accepted(client: Issued) -> bool:
        tls = ClientTLS.from_files(str(ca.pem), str(client.cert), str(client.key))
        with DescriptorClient(proc.target, tls=tls, timeout=5) as c:
            try:
                return c.health("") == "SERVING"
            except Exception:
                return False

    with serving(config, tmp_path) as proc:
        assert accepted(old_client)
        assert not accepted(new_client)
        volume.write({**tls_files(server), "ca.crt": old_clients.pem.read_bytes() + new_clients.pem.read_bytes()})
        proc.signal(signal.SIGHUP)
        eventually(lambda: accepted(new_client), 8, "the new client CA")
        assert accepted(old_client)


def test_the_static_tokens_file_rotates(tmp_path: Path, layout: Layout) -> None:
    blob = layout.push("team/app", b"a layer behind a token")
    volume = SecretVolume(tmp_path / "tokens")

    def tokens_file(*names: str) -> dict[str, bytes]:
        entries = [{"name": n, "scope": "read", "sha256": token_hash(f"secret-{n}")} for n in names]
        return {"tokens.yml": yaml.safe_dump(entries).encode()}

    volume.write(tokens_file("old"))
    config = base_config(layout.root)
    config["auth"] = {"tokensfile": volume.path("tokens.yml")}

    def accepted(name: str) -> bool:
        with DescriptorClient(proc.target, token=f"secret-{name}", timeout=5) as c:
            try:
                return c.stat(blob, "team/app").digest == blob
            except UnauthenticatedError:
                return False

    with serving(config, tmp_path) as proc:
        assert accepted("old")
        assert not accepted("new")
        volume.write(tokens_file("old", "new"))  # noticed on the call path, within the interval
        took = eventually(lambda: accepted("new"), RELOAD_INTERVAL + 10, "the added token")
        assert took <= RELOAD_INTERVAL + 5
        assert accepted("old")
        volume.write(tokens_file("new"))
        proc.signal(signal.SIGHUP)  # at once
        eventually(lambda: not accepted("old"), 8, "the removed token refused")
        assert accepted("new")
        # A file that does not parse leaves the tokens in force.
        volume.write({"tokens.yml": b"[not: yaml"})
        proc.signal(signal.SIGHUP)
        eventually(lambda: "static tokens not reloaded (SIGHUP)" in proc.output, 8, "the refusal logged")
        assert accepted("new")
        assert not accepted("old")
