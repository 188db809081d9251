"""TLS, mutual TLS, scoped bearer tokens and the server's limits, against the real server.

Certificates are made at test time (``pki.py``); every server is the real
``descriptor-server`` process on a loopback port; clients are the project's own.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from descriptor_client import (
    OCTET_STREAM,
    BatchTooLargeError,
    BlobUnknownError,
    ClientTLS,
    Descriptor,
    DescriptorClient,
    DescriptorError,
    DescriptorInvalidError,
    PermissionDeniedError,
    RepositoryNameInvalidError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
from descriptor_client._proto.descriptor.v1 import descriptor_pb2 as pb
from descriptor_client.errors import from_rpc_error
from descriptor_server.security import TokenAuthorizer, bearer_token, token_hash
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers.pki import CA, Issued
from helpers.support import Layout, ServerProcess, base_config, run_server_command, wait_for

READ_TOKEN = "r3ad-t0ken-for-tests"
WRITE_TOKEN = "wr1te-t0ken-for-tests"
TOKENS = [
    {"name": "puller", "scope": "read", "sha256": token_hash(READ_TOKEN)},
    {"name": "gc", "scope": "write", "sha256": token_hash(WRITE_TOKEN)},
]
SERVICE = "descriptor.v1.BlobDescriptorService"
HEALTH_LINE = r"health-only listener at (\S+):(\d+)"


# -- certificates and servers ----------------------------------------------------------------


class PKI:
    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.ca = CA(directory, "test-ca")
        self.rogue = CA(directory, "rogue-ca")
        self.server = self.ca.issue("server", dns=("localhost",), ips=("127.0.0.1", "::1"))
        self.named = self.ca.issue("named-server", dns=("descriptor.internal",))
        self.client = self.ca.issue("client", client=True)
        self.rogue_client = self.rogue.issue("rogue-client", client=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Layout:
    root = tmp_path_factory.mktemp("registry")
    return Layout(root)


@contextlib.contextmanager
def serve(config: dict[str, Any], workdir: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(config, workdir).start()
    try:
        yield proc
    finally:
        proc.stop()


def tls_config(root: Path, issued: Issued, clientcas: list[Path] | None = None, **grpc_keys: Any) -> dict[str, Any]:
    config = base_config(root, **grpc_keys)
    config["grpc"]["tls"] = {
        "certificate": str(issued.cert),
        "key": str(issued.key),
        "clientcas": [str(p) for p in clientcas or []],
    }
    return config


def health_port(proc: ServerProcess) -> int:
    """The health-only listener's port, from the line the server logs just after it is ready."""
    wait_for(lambda: re.search(HEALTH_LINE, proc.output) is not None, 10)
    m = re.search(HEALTH_LINE, proc.output)
    assert m, proc.output
    return int(m.group(2))


def check_health(channel: grpc.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    status: int = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
    return status


@pytest.fixture(scope="module")
def tls_server(pki: PKI, registry: Layout, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """TLS with a certificate naming only ``descriptor.internal`` (no IP address)."""
    with serve(tls_config(registry.root, pki.named), tmp_path_factory.mktemp("tls")) as proc:
        yield proc


@pytest.fixture(scope="module")
def mtls_server(pki: PKI, registry: Layout, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Mutual TLS, bearer tokens, and a plaintext health-only listener on loopback."""
    config = tls_config(registry.root, pki.server, [pki.ca.pem], healthaddr="127.0.0.1:0")
    config["auth"] = {"tokens": TOKENS}
    with serve(config, tmp_path_factory.mktemp("mtls")) as proc:
        yield proc


@pytest.fixture(scope="module")
def token_server(registry: Layout, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    config = base_config(registry.root)
    config["auth"] = {"tokens": TOKENS}
    with serve(config, tmp_path_factory.mktemp("tokens")) as proc:
        yield proc


@pytest.fixture(scope="module")
def pushed(registry: Layout) -> str:
    return registry.push("library/app", b"a layer of the app")


# -- TLS ------------------------------------------------------------------------------------


def test_plaintext_client_to_a_tls_server_fails(tls_server: ServerProcess) -> None:
    with DescriptorClient(tls_server.target, timeout=5) as client, pytest.raises(UnavailableError):
        client.metrics()


def test_tls_client_trusting_the_ca_works_with_the_server_name(
    tls_server: ServerProcess, pki: PKI, pushed: str
) -> None:
    tls = ClientTLS.from_files(ca=str(pki.ca.pem), server_name="descriptor.internal")
    with DescriptorClient(tls_server.target, timeout=5, tls=tls) as client:
        assert client.stat(pushed, "library/app").digest == pushed


def test_tls_server_name_is_verified(tls_server: ServerProcess, pki: PKI) -> None:
    """The certificate names descriptor.internal, not 127.0.0.1: without the override the name check fails."""
    tls = ClientTLS.from_files(ca=str(pki.ca.pem))
    with DescriptorClient(tls_server.target, timeout=5, tls=tls) as client, pytest.raises(UnavailableError):
        client.metrics()


def test_tls_client_trusting_another_ca_fails(tls_server: ServerProcess, pki: PKI) -> None:
    tls = ClientTLS.from_files(ca=str(pki.rogue.pem), server_name="descriptor.internal")
    with DescriptorClient(tls_server.target, timeout=5, tls=tls) as client, pytest.raises(UnavailableError):
        client.metrics()


# -- mutual TLS -------------------------------------------------------------------------------


def test_mtls_without_a_client_certificate_fails(mtls_server: ServerProcess, pki: PKI) -> None:
    tls = ClientTLS.from_files(ca=str(pki.ca.pem))
    with (
        DescriptorClient(mtls_server.target, timeout=5, tls=tls, token=WRITE_TOKEN) as client,
        pytest.raises(UnavailableError),
    ):
        client.metrics()


def test_mtls_with_a_certificate_from_another_ca_fails(mtls_server: ServerProcess, pki: PKI) -> None:
    tls = ClientTLS.from_files(str(pki.ca.pem), str(pki.rogue_client.cert), str(pki.rogue_client.key))
    with (
        DescriptorClient(mtls_server.target, timeout=5, tls=tls, token=WRITE_TOKEN) as client,
        pytest.raises(UnavailableError),
    ):
        client.metrics()


def test_mtls_with_the_right_certificate_works(mtls_server: ServerProcess, pki: PKI, pushed: str) -> None:
    tls = ClientTLS.from_files(str(pki.ca.pem), str(pki.client.cert), str(pki.client.key))
    with DescriptorClient(mtls_server.target, timeout=5, tls=tls, token=READ_TOKEN) as client:
        assert client.stat(pushed).size == len(b"a layer of the app")
        # Transport and tokens are independent controls: the certificate is not a token.
        with pytest.raises(PermissionDeniedError):
            client.clear(pushed)
    with DescriptorClient(mtls_server.target, timeout=5, tls=tls) as client, pytest.raises(UnauthenticatedError):
        client.stat(pushed)


async def test_mtls_async_client(mtls_server: ServerProcess, pki: PKI, pushed: str) -> None:
    from descriptor_client import AsyncDescriptorClient

    tls = ClientTLS.from_files(str(pki.ca.pem), str(pki.client.cert), str(pki.client.key), server_name="localhost")
    async with AsyncDescriptorClient(mtls_server.target, timeout=5, tls=tls, token=READ_TOKEN) as client:
        assert (await client.stat(pushed, "library/app")).digest == pushed


def test_probes_get_in_under_mtls_through_the_health_listener(mtls_server: ServerProcess, pki: PKI) -> None:
    port = health_port(mtls_server)
    assert port != mtls_server.port
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        assert check_health(channel) == health_pb2.HealthCheckResponse.SERVING
        assert check_health(channel, SERVICE) == health_pb2.HealthCheckResponse.SERVING
        # Only health is there: the descriptor service is not reachable without TLS.
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary(f"/{SERVICE}/GetMetrics")(b"", timeout=5)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    # On the main port health needs the client certificate, but no token.
    creds = ClientTLS.from_files(str(pki.ca.pem), str(pki.client.cert), str(pki.client.key)).credentials()
    with grpc.secure_channel(mtls_server.target, creds) as channel:
        assert check_health(channel) == health_pb2.HealthCheckResponse.SERVING


# -- bearer tokens -----------------------------------------------------------------------------

READ_METHODS = ("Stat", "BatchStat", "GetMetrics", "Revalidate")
WRITE_METHODS = ("SetDescriptor", "Clear")


def call(client: DescriptorClient, method: str, digest: str) -> None:
    """One call of ``method`` that succeeds when allowed (the blob is pushed; Set precedes Clear)."""
    if method == "Stat":
        assert client.stat(digest, "library/app") == Descriptor(OCTET_STREAM, digest, len(b"a layer of the app"))
    elif method == "BatchStat":
        (result,) = client.batch_stat([digest], "library/app")
        assert isinstance(result, Descriptor)
    elif method == "GetMetrics":
        client.metrics()
    elif method == "Revalidate":
        assert client.revalidate(digest, "library/app").digest == digest
    elif method == "SetDescriptor":
        client.set_descriptor(digest, Descriptor(OCTET_STREAM, digest, 3), "team/scratch")
    else:
        client.clear(digest, "team/scratch")


@pytest.mark.parametrize("method", READ_METHODS + WRITE_METHODS)
def test_no_token_is_unauthenticated(token_server: ServerProcess, pushed: str, method: str) -> None:
    with DescriptorClient(token_server.target, timeout=5) as client, pytest.raises(UnauthenticatedError) as info:
        call(client, method, pushed)
    assert info.value.reason == "UNAUTHENTICATED"
    assert info.value.code == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("method", READ_METHODS + WRITE_METHODS)
def test_unknown_token_is_unauthenticated(token_server: ServerProcess, pushed: str, method: str) -> None:
    with (
        DescriptorClient(token_server.target, timeout=5, token="not-a-configured-token") as client,
        pytest.raises(UnauthenticatedError),
    ):
        call(client, method, pushed)


@pytest.mark.parametrize(
    "header",
    [
        f"Basic {WRITE_TOKEN}",
        "Bearer",
        "Bearer ",
        WRITE_TOKEN,
        f"Bearer {token_hash(WRITE_TOKEN)}",  # the stored hash is not a credential
        f"Bearer {WRITE_TOKEN}x",
    ],
)
def test_malformed_authorization_is_unauthenticated(token_server: ServerProcess, header: str) -> None:
    with grpc.insecure_channel(token_server.target) as channel:
        method = channel.unary_unary(f"/{SERVICE}/GetMetrics")
        with pytest.raises(grpc.RpcError) as info:
            method(b"", metadata=(("authorization", header),), timeout=5)
    err = from_rpc_error(info.value)
    assert (err.code, err.reason) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")


@pytest.mark.parametrize("method", READ_METHODS)
def test_read_token_may_read(token_server: ServerProcess, pushed: str, method: str) -> None:
    with DescriptorClient(token_server.target, timeout=5, token=READ_TOKEN) as client:
        call(client, method, pushed)


@pytest.mark.parametrize("method", WRITE_METHODS)
def test_read_token_may_not_write(token_server: ServerProcess, registry: Layout, pushed: str, method: str) -> None:
    with DescriptorClient(token_server.target, timeout=5, token=READ_TOKEN) as client:
        with pytest.raises(PermissionDeniedError) as info:
            call(client, method, pushed)
        assert info.value.reason == "PERMISSION_DENIED"
        assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(PermissionDeniedError):
            client.clear(pushed, "library/app")
    # Denied before anything changed: nothing was set, nothing cleared.
    with DescriptorClient(token_server.target, timeout=5, token=WRITE_TOKEN) as client:
        with pytest.raises(BlobUnknownError):
            client.stat(pushed, "team/scratch")
        assert client.stat(pushed, "library/app").digest == pushed
    assert registry.link("library/app", pushed).exists()


def test_write_token_may_do_everything(token_server: ServerProcess, pushed: str) -> None:
    with DescriptorClient(token_server.target, timeout=5, token=WRITE_TOKEN) as client:
        for method in READ_METHODS + WRITE_METHODS:
            call(client, method, pushed)
        with pytest.raises(BlobUnknownError):  # the Clear above took effect
            client.stat(pushed, "team/scratch")


def test_token_from_the_environment(token_server: ServerProcess, pushed: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DESCRIPTOR_TOKEN", READ_TOKEN)
    with DescriptorClient(token_server.target, timeout=5) as client:
        assert client.stat(pushed).digest == pushed
        with pytest.raises(PermissionDeniedError):
            client.clear(pushed)


def test_health_and_reflection_need_no_token(token_server: ServerProcess) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(token_server.target) as channel:
        assert check_health(channel) == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert SERVICE in names


def test_tokens_file(registry: Layout, pushed: str, tmp_path: Path) -> None:
    tokens_file = tmp_path / "tokens.yml"
    tokens_file.write_text(yaml.safe_dump(TOKENS))
    config = base_config(registry.root)
    config["auth"] = {"tokensfile": str(tokens_file)}
    with serve(config, tmp_path) as proc:
        with DescriptorClient(proc.target, timeout=5, token=READ_TOKEN) as client:
            assert client.stat(pushed).digest == pushed
            with pytest.raises(PermissionDeniedError):
                client.clear(pushed)
        with DescriptorClient(proc.target, timeout=5) as client, pytest.raises(UnauthenticatedError):
            client.metrics()
    assert READ_TOKEN not in proc.output
    assert WRITE_TOKEN not in proc.output


def run_server(config: dict[str, Any], workdir: Path, flag: str = "--config") -> subprocess.CompletedProcess[str]:
    path = workdir / "config.yml"
    path.write_text(yaml.safe_dump(config))
    return run_server_command([flag, str(path)], cwd=workdir, timeout=30)


@pytest.mark.parametrize(
    ("content", "key"),
    [
        (None, "auth.tokensfile"),
        ("[{name: x, scope: admin, sha256: " + "a" * 64 + "}]", "auth.tokensfile[0].scope"),
        ("[{name: x, scope: read, sha256: plain-token}]", "auth.tokensfile[0].sha256"),
        ("[{name: x, scope: read, sha256: " + "a" * 64 + ", extra: 1}]", "auth.tokensfile[0].extra"),
        ("{not: [a list", "auth.tokensfile"),
        ("[]", "auth.tokensfile"),
    ],
)
def test_bad_tokens_file_refused_at_start(tmp_path: Path, content: str | None, key: str) -> None:
    tokens_file = tmp_path / "tokens.yml"
    if content is not None:
        tokens_file.write_text(content)
    root = tmp_path / "r"
    root.mkdir()
    config = base_config(root)
    config["auth"] = {"tokensfile": str(tokens_file)}
    result = run_server(config, tmp_path)
    assert result.returncode == 2, result.stderr
    assert key + ":" in result.stderr
    checked = run_server(config, tmp_path, "--check-config")
    assert checked.returncode == 2, checked.stdout
    assert key + ":" in checked.stderr


def test_unreadable_tls_files_refused_at_start(tmp_path: Path, pki: PKI) -> None:
    root = tmp_path / "r"
    root.mkdir()
    missing = Issued(tmp_path / "nope.crt", pki.server.key)
    result = run_server(tls_config(root, missing), tmp_path)
    assert result.returncode == 2
    assert "grpc.tls.certificate:" in result.stderr
    result = run_server(tls_config(root, pki.server, [tmp_path / "nope-ca.crt"]), tmp_path)
    assert result.returncode == 2
    assert "grpc.tls.clientcas[0]:" in result.stderr


def test_check_config_masks_token_hashes(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump({"auth": {"tokens": TOKENS}}))
    result = subprocess.run(
        [sys.executable, "-m", "descriptor_server", "--check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert token_hash(WRITE_TOKEN) not in result.stdout
    assert "gc" in result.stdout


def test_authorizer_compares_hashes_of_every_entry() -> None:
    """Unit view of the matching rules the wire tests rely on."""
    from descriptor_server.config import AuthToken

    auth = TokenAuthorizer(
        [AuthToken(t["name"], t["scope"], t["sha256"]) for t in TOKENS]
        + [AuthToken("dup", "read", token_hash(WRITE_TOKEN))]
    )
    assert auth.authorize("Clear", [("authorization", f"Bearer {WRITE_TOKEN}")]) == "gc"  # first entry wins
    assert auth.authorize("Stat", [("authorization", f"bearer  {READ_TOKEN} ")]) == "puller"
    assert bearer_token([("x-other", "Bearer a"), ("authorization", b"Bearer b")]) == "b"
    with pytest.raises(UnauthenticatedError):
        auth.authorize("Stat", [])
    with pytest.raises(PermissionDeniedError):
        auth.authorize("SomeFutureMethod", [("authorization", f"Bearer {READ_TOKEN}")])  # deny by default
    assert hashlib.sha256(READ_TOKEN.encode()).hexdigest() == token_hash(READ_TOKEN)


# -- limits ---------------------------------------------------------------------------------------


class Gate:
    """A FIFO in place of a repository link file: a Stat reading it blocks until released."""

    def __init__(self, layout: Layout, repository: str, digest: str) -> None:
        self.path = layout.link(repository, digest)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(self.path)
        self.digest = digest
        self.fd: int | None = None

    def _open(self) -> bool:
        try:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as err:
            if err.errno == errno.ENXIO:  # no reader yet
                return False
            raise
        return True

    def wait_reader(self, timeout: float = 15.0) -> None:
        """Wait until the server has opened the link; it then blocks reading it."""
        wait_for(self._open, timeout)

    def release(self) -> None:
        if self.fd is None and not self._open():
            return
        assert self.fd is not None
        os.write(self.fd, self.digest.encode())
        os.close(self.fd)
        self.fd = None


@pytest.fixture
def limits_server(tmp_path: Path) -> Iterator[tuple[ServerProcess, Layout]]:
    layout = Layout(tmp_path / "registry")
    layout.root.mkdir()
    config = base_config(
        layout.root,
        maxconcurrentcalls=2,
        maxbatch=3,
        maxrecvmsgsize=1024,
        maxmetadatasize=2048,
        drain="5s",
        keepalive={"minpinginterval": "60s", "maxpingstrikes": 1},
    )
    with serve(config, tmp_path) as proc:
        yield proc, layout


def test_concurrent_call_limit(limits_server: tuple[ServerProcess, Layout]) -> None:
    proc, layout = limits_server
    digests = [layout.put_blob(f"held {i}".encode()) for i in range(2)]
    gates = [Gate(layout, "held/calls", d) for d in digests]
    try:
        with grpc.insecure_channel(proc.target) as channel:
            stat = channel.unary_unary(f"/{SERVICE}/Stat", request_serializer=pb.StatRequest.SerializeToString)
            futures = [stat.future(pb.StatRequest(digest=d, repository="held/calls"), timeout=30) for d in digests]
            for gate in gates:
                gate.wait_reader()
            with DescriptorClient(proc.target, timeout=5) as client:
                with pytest.raises(ResourceExhaustedError) as info:
                    client.metrics()
                assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
                for gate in gates:
                    gate.release()
                for fut in futures:
                    assert pb.StatResponse.FromString(fut.result(timeout=15)).descriptor.digest in digests
                client.metrics()  # room again once the held calls finished
    finally:
        for gate in gates:
            gate.release()


def test_message_size_and_batch_limits(limits_server: tuple[ServerProcess, Layout]) -> None:
    proc, layout = limits_server
    digest = layout.put_blob(b"small")
    with DescriptorClient(proc.target, timeout=5) as client:
        with pytest.raises(BatchTooLargeError):
            client.batch_stat([digest] * 4)
        assert len(client.batch_stat([digest] * 3)) == 3
        with pytest.raises(ResourceExhaustedError):  # 20 digests: over maxrecvmsgsize (1024 bytes)
            client.batch_stat([digest] * 20)
        assert client.stat(digest).size == 5


def test_metadata_size_limit(limits_server: tuple[ServerProcess, Layout]) -> None:
    proc, _ = limits_server
    with DescriptorClient(proc.target, timeout=5) as client:
        client.metrics()
    with grpc.insecure_channel(proc.target) as channel:
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary(f"/{SERVICE}/GetMetrics")(b"", metadata=(("x-padding", "p" * 4096),), timeout=5)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        channel.unary_unary(f"/{SERVICE}/GetMetrics")(b"", metadata=(("x-padding", "p" * 512),), timeout=5)


def test_media_type_and_repository_limits(limits_server: tuple[ServerProcess, Layout]) -> None:
    proc, _ = limits_server
    digest = "sha256:" + "a" * 64
    with DescriptorClient(proc.target, timeout=5) as client:
        longest = "t" * 127 + "/" + "s" * 127  # 255 characters, each name at RFC 6838's 127
        client.set_descriptor(digest, Descriptor(longest, digest, 1))
        assert client.stat(digest).media_type == longest
        too_long = "application/json; p=" + "v" * 236  # well-formed, but 256 characters
        for media_type in (too_long, "t" * 128 + "/s", "not a media type", "text/", "a/b; c", "a/b\x00"):
            with pytest.raises(DescriptorInvalidError):
                client.set_descriptor(digest, Descriptor(media_type, digest, 1))
        for repository in ("a" * 256, "Foo/Bar", "foo//bar", "localhost:5000/x", "../x", "/etc", "foo/bar:tag"):
            with pytest.raises(RepositoryNameInvalidError):
                client.stat(digest, repository)


def test_keepalive_enforcement_disconnects_a_ping_flood(limits_server: tuple[ServerProcess, Layout]) -> None:
    """A client pinging far more often than grpc.keepalive.minpinginterval is sent GOAWAY."""
    proc, _ = limits_server
    options = [
        ("grpc.keepalive_time_ms", 50),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    states: list[grpc.ChannelConnectivity] = []
    left_ready = threading.Event()

    def watch(state: grpc.ChannelConnectivity) -> None:
        states.append(state)
        if grpc.ChannelConnectivity.READY in states and state != grpc.ChannelConnectivity.READY:
            left_ready.set()

    with grpc.insecure_channel(proc.target, options=options) as channel:
        channel.subscribe(watch, try_to_connect=True)
        channel.unary_unary(f"/{SERVICE}/GetMetrics")(b"", timeout=5)
        assert left_ready.wait(30), states
        channel.unsubscribe(watch)


def test_drain_turns_the_health_listener_not_serving(pki: PKI, tmp_path: Path) -> None:
    """Under mTLS, probes on the health-only listener see the drain while calls finish."""
    layout = Layout(tmp_path / "registry")
    layout.root.mkdir()
    config = tls_config(layout.root, pki.server, [pki.ca.pem], healthaddr="127.0.0.1:0", drain="20s")
    config["auth"] = {"tokens": TOKENS}
    digest = layout.put_blob(b"held during drain")
    gate = Gate(layout, "held/drain", digest)
    tls = ClientTLS.from_files(str(pki.ca.pem), str(pki.client.cert), str(pki.client.key))
    proc = ServerProcess(config, tmp_path).start()
    try:
        with (
            grpc.insecure_channel(f"127.0.0.1:{health_port(proc)}") as probe,
            DescriptorClient(proc.target, timeout=30, tls=tls, token=READ_TOKEN) as client,
        ):
            assert check_health(probe) == health_pb2.HealthCheckResponse.SERVING
            result: list[Descriptor | DescriptorError] = []
            worker = threading.Thread(target=capture(result, lambda: client.stat(digest, "held/drain")))
            worker.start()
            gate.wait_reader()
            proc.signal()
            wait_for(lambda: check_health(probe) == health_pb2.HealthCheckResponse.NOT_SERVING, 15)
            gate.release()
            worker.join(30)
            assert len(result) == 1
            assert isinstance(result[0], Descriptor), result
        assert proc.wait(30) == 0
    finally:
        gate.release()
        proc.stop()


def capture(out: list[Any], fn: Callable[[], Any]) -> Callable[[], None]:
    def run() -> None:
        try:
            out.append(fn())
        except DescriptorError as err:
            out.append(err)

    return run


@pytest.mark.parametrize(
    ("grpc_keys", "key"),
    [
        ({"maxmetadatasize": 100}, "grpc.maxmetadatasize"),
        ({"keepalive": {"time": "0s"}}, "grpc.keepalive.time"),
        ({"keepalive": {"timeout": 0}}, "grpc.keepalive.timeout"),
        ({"keepalive": {"minpinginterval": "soon"}}, "grpc.keepalive.minpinginterval"),
        ({"keepalive": {"maxpingstrikes": -1}}, "grpc.keepalive.maxpingstrikes"),
        ({"keepalive": {"permitwithoutcalls": "yes"}}, "grpc.keepalive.permitwithoutcalls"),
        ({"keepalive": {"pings": 1}}, "grpc.keepalive.pings"),
        ({"tls": {"certificate": "server.crt"}}, "grpc.tls"),
        ({"tls": {"clientcas": ["ca.crt"]}}, "grpc.tls.clientcas"),
    ],
)
def test_bad_limit_and_tls_keys_are_named(grpc_keys: dict[str, Any], key: str) -> None:
    from descriptor_server.config import ConfigError, from_dict

    with pytest.raises(ConfigError) as info:
        from_dict({"grpc": grpc_keys})
    assert info.value.key == key


def test_limit_keys_reach_grpc_options() -> None:
    from descriptor_server.config import from_dict
    from descriptor_server.rpc.limits import limit_options

    config = from_dict(
        {"grpc": {"maxmetadatasize": 4096, "keepalive": {"minpinginterval": "30s", "maxconnectionage": "1h"}}}
    )
    options = dict(limit_options(config.grpc))
    assert options["grpc.max_metadata_size"] == options["grpc.absolute_max_metadata_size"] == 4096
    assert options["grpc.http2.min_recv_ping_interval_without_data_ms"] == 30000
    assert options["grpc.max_connection_age_ms"] == 3_600_000
    assert "grpc.max_connection_idle_ms" not in options
