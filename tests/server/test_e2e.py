"""Issue 2 end to end: the server started from its command, called over the wire.

Conformance cases are in test_conformance.py; metrics, health and logs in the
observability tests; TLS, tokens and confinement in the security tests.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from descriptor_client import (
    BackendUnavailableError,
    BlobUnknownError,
    Descriptor,
    DescriptorClient,
    DescriptorError,
    DigestInvalidFormatError,
    DigestInvalidLengthError,
    DigestUnsupportedError,
    RepositoryNameInvalidError,
    ServerDrainingError,
    UnavailableError,
    UnsupportedError,
)
from descriptor_client._proto.descriptor.v1 import descriptor_pb2 as pb
from descriptor_client.errors import error_info
from google.rpc import status_pb2
from grpc_status import rpc_status
from helpers.fifo_support import make_fifo, open_writer
from helpers.support import (
    A256,
    OCT,
    REPO,
    Layout,
    ServerProcess,
    base_config,
    port_free,
    run_server_command,
    wait_for,
)

SERVICE = "/descriptor.v1.BlobDescriptorService/"


@pytest.fixture(scope="module")
def disabled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Layout]]:
    """One server for the module with deletion disabled (the default)."""
    tmp = tmp_path_factory.mktemp("e2e")
    layout = Layout(tmp / "registry")
    layout.root.mkdir()
    proc = ServerProcess(base_config(layout.root, delete=False, maxbatch=10), tmp).start()
    try:
        yield proc, layout
    finally:
        proc.stop()


def raw_call(target: str, method: str, body: bytes) -> grpc.RpcError:
    """Send raw bytes (no serializer) and return the error the server answers."""
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(SERVICE + method)
        with pytest.raises(grpc.RpcError) as info:
            call(body, timeout=10)
    err: grpc.RpcError = info.value
    return err


def reason_of(err: grpc.RpcError) -> str:
    status = rpc_status.from_call(err)
    assert status is not None, "the status carries no google.rpc.Status detail"
    info = error_info(status)
    assert info is not None, "the status carries no ErrorInfo"
    assert info.domain == "descriptor.v1"
    return info.reason


# -- Stat over the wire ------------------------------------------------------------


def test_blob_in_distribution_layout_stats_globally_and_through_its_link(
    disabled: tuple[ServerProcess, Layout],
) -> None:
    proc, layout = disabled
    content = os.urandom(4321)
    digest = layout.push(REPO, content)
    with DescriptorClient(proc.target) as client:
        assert client.stat(digest) == Descriptor(OCT, digest, 4321)
        assert client.stat(digest, REPO) == Descriptor(OCT, digest, 4321)
        with pytest.raises(BlobUnknownError):
            client.stat(digest, "other/repo")


def test_digest_not_on_disk_is_not_found(disabled: tuple[ServerProcess, Layout]) -> None:
    proc, _ = disabled
    with DescriptorClient(proc.target) as client:
        for scope in ("", REPO):
            with pytest.raises(BlobUnknownError) as info:
                client.stat(A256, scope)
            assert info.value.code == grpc.StatusCode.NOT_FOUND
            assert info.value.reason == "BLOB_UNKNOWN"


@pytest.mark.parametrize(
    ("digest", "repository", "error"),
    [
        ("sha256:" + "ABCDEF0123456789" * 4, "", DigestInvalidFormatError),
        ("sha384:abc", "", DigestInvalidLengthError),
        ("md5:abc", "", DigestUnsupportedError),
        (A256, "Foo/Bar", RepositoryNameInvalidError),
    ],
)
def test_bad_input_is_invalid_argument_with_the_reason(
    disabled: tuple[ServerProcess, Layout], digest: str, repository: str, error: type[DescriptorError]
) -> None:
    proc, _ = disabled
    body = pb.StatRequest(digest=digest, repository=repository).SerializeToString()
    err = raw_call(proc.target, "Stat", body)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(err) == error.reason
    with DescriptorClient(proc.target) as client, pytest.raises(error):
        client.stat(digest, repository)


def test_undecodable_body_is_request_invalid(disabled: tuple[ServerProcess, Layout]) -> None:
    proc, _ = disabled
    for method in ("Stat", "SetDescriptor", "Clear", "BatchStat"):
        err = raw_call(proc.target, method, b"\xff\xff")
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, method
        assert reason_of(err) == "REQUEST_INVALID"
    # A truncated field, and a digest string that is not UTF-8.
    for body in (b"\x0a\x05ab", b"\x0a\x02\xff\xfe"):
        err = raw_call(proc.target, "Stat", body)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert reason_of(err) == "REQUEST_INVALID"


def test_batch_stat_answers_in_request_order(disabled: tuple[ServerProcess, Layout]) -> None:
    proc, layout = disabled
    a = layout.push(REPO, b"first")
    b = layout.push(REPO, b"second!")
    digests = [b, "md5:abc", A256, a, "sha384:abc", b]
    with grpc.insecure_channel(proc.target) as channel:
        call = channel.unary_unary(
            SERVICE + "BatchStat",
            request_serializer=pb.BatchStatRequest.SerializeToString,
            response_deserializer=pb.BatchStatResponse.FromString,
        )
        resp = call(pb.BatchStatRequest(digests=digests, repository=REPO), timeout=10)
        assert [r.digest for r in resp.results] == digests
        kinds = [r.WhichOneof("result") for r in resp.results]
        assert kinds == ["descriptor", "status", "status", "descriptor", "status", "descriptor"]
        assert resp.results[0].descriptor == pb.Descriptor(media_type=OCT, digest=b, size=7)
        assert resp.results[3].descriptor == pb.Descriptor(media_type=OCT, digest=a, size=5)

        def item_reason(status: status_pb2.Status) -> tuple[int, str]:
            info = error_info(status)
            assert info is not None
            return status.code, info.reason

        assert item_reason(resp.results[1].status) == (3, "DIGEST_UNSUPPORTED")
        assert item_reason(resp.results[2].status) == (5, "BLOB_UNKNOWN")
        assert item_reason(resp.results[4].status) == (3, "DIGEST_INVALID_LENGTH")
        # A bad repository or too many digests (grpc.maxbatch: 10) fails the whole call.
        for req, reason in (
            (pb.BatchStatRequest(digests=[a], repository="Foo/Bar"), "REPOSITORY_NAME_INVALID"),
            (pb.BatchStatRequest(digests=[a] * 11), "BATCH_TOO_LARGE"),
        ):
            with pytest.raises(grpc.RpcError) as info:
                call(req, timeout=10)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert reason_of(info.value) == reason


def test_clear_with_deletion_disabled_is_unsupported_and_the_blob_untouched(
    disabled: tuple[ServerProcess, Layout],
) -> None:
    proc, layout = disabled
    digest = layout.push(REPO, b"precious")
    with DescriptorClient(proc.target) as client:
        for scope in ("", REPO):
            with pytest.raises(UnsupportedError) as info:
                client.clear(digest, scope)
            assert info.value.code == grpc.StatusCode.UNIMPLEMENTED
            assert info.value.reason == "UNSUPPORTED"
        assert client.stat(digest, REPO) == Descriptor(OCT, digest, 8)
    assert layout.blob_data(digest).read_bytes() == b"precious"
    assert layout.link(REPO, digest).read_text() == digest


# -- fresh servers -------------------------------------------------------------------


def test_second_stat_is_a_cache_hit_in_get_metrics(server: ServerProcess, layout: Layout) -> None:
    digest = layout.put_blob(b"counted")
    with DescriptorClient(server.target) as client:
        assert client.stat(digest).size == 7
        assert client.stat(digest).size == 7
        m = client.metrics()
    assert (m.requests, m.hits, m.misses, m.errors) == (2, 1, 1, 0)


def test_backend_unavailable_is_not_retried_by_clients(server: ServerProcess, layout: Layout) -> None:
    """Clients retry UNAVAILABLE (a draining replica), but BACKEND_UNAVAILABLE carries
    server pushback, so a failing backend is asked once per call, not three times."""
    digest = layout.put_blob(b"linked badly")
    layout.put_link(REPO, digest, target="not a digest")  # a corrupt link: the backend fails
    with DescriptorClient(server.target) as client:
        with pytest.raises(BackendUnavailableError):
            client.stat(digest, REPO)
        m = client.metrics()
    assert (m.requests, m.misses) == (1, 1)


def test_clear_enabled_removes_the_link_and_keeps_the_data(server: ServerProcess, layout: Layout) -> None:
    digest = layout.push(REPO, b"soft deleted")
    with DescriptorClient(server.target) as client:
        assert client.stat(digest, REPO).size == 12  # now cached in both scopes
        client.clear(digest, REPO)
        assert not layout.link(REPO, digest).exists()
        with pytest.raises(BlobUnknownError):
            client.stat(digest, REPO)
        assert client.stat(digest) == Descriptor(OCT, digest, 12)
        with pytest.raises(BlobUnknownError):
            client.clear(digest, REPO)  # neither the cache nor the disk lists it now
        client.clear(digest)  # global Clear deletes the data
        assert not layout.blob_data(digest).exists()
        with pytest.raises(BlobUnknownError):
            client.stat(digest)


def test_sigterm_drains(tmp_path: Path, layout: Layout) -> None:
    digest = layout.put_blob(b"in flight")
    fifo = make_fifo(layout.link(REPO, digest))
    proc = ServerProcess(base_config(layout.root), tmp_path).start()
    writer: int | None = None
    pool = ThreadPoolExecutor(1)
    try:
        # A client that does not watch health, so that its new calls reach the draining
        # server (ours fail them UNAVAILABLE in the client once it turns NOT_SERVING).
        no_health = [("grpc.inhibit_health_checking", 1)]
        with DescriptorClient(proc.target, timeout=30, options=no_health) as client:
            held: Future[Descriptor] = pool.submit(client.stat, digest, REPO)
            # The server has the FIFO open for reading once a writer can open it; the
            # writer holds it open without writing, so the server's read blocks.
            writer = open_writer(fifo, timeout=20)
            assert writer is not None, "the held call never reached the backend"
            proc.signal()

            def draining() -> bool:
                try:
                    client.stat(A256, timeout=5)
                except ServerDrainingError:
                    return True
                except BlobUnknownError:
                    return False
                return False

            wait_for(draining, timeout=20)
            with pytest.raises(ServerDrainingError) as info:
                client.stat(A256, timeout=5)
            assert info.value.code == grpc.StatusCode.UNAVAILABLE
            assert not held.done()
            os.write(writer, digest.encode())
            os.close(writer)
            writer = None
            assert held.result(timeout=20) == Descriptor(OCT, digest, 9)
        assert proc.wait(30) == 0
    finally:
        if writer is not None:
            os.close(writer)
        pool.shutdown(wait=False, cancel_futures=True)
        proc.stop()


def test_sigterm_exits_even_with_a_backend_call_stuck_for_good(tmp_path: Path, layout: Layout) -> None:
    """A backend read that never returns (a hung mount) must not keep the drained server alive."""
    digest = layout.put_blob(b"stuck")
    fifo = make_fifo(layout.link(REPO, digest))
    proc = ServerProcess(base_config(layout.root, drain="1s"), tmp_path).start()
    pool = ThreadPoolExecutor(1)
    try:
        with DescriptorClient(proc.target, timeout=30) as client:
            held: Future[Descriptor] = pool.submit(client.stat, digest, REPO)
            writer = open_writer(fifo, timeout=20)  # the server's read is now blocked for good
            assert writer is not None
            try:
                proc.signal()
                assert proc.wait(30) == 0
                with pytest.raises(UnavailableError):  # cut off by the drain's grace period: retryable
                    held.result(timeout=20)
            finally:
                os.close(writer)
        assert "still blocked" in proc.output
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        proc.stop()


# -- configuration at start ------------------------------------------------------------


def run_server(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_server_command(args, cwd=cwd, env={**os.environ, **(env or {})})


def write_config(tmp_path: Path, data: dict[str, Any]) -> str:
    path = tmp_path / "bad.yml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.mark.parametrize(
    ("grpc_section", "cache", "env", "key"),
    [
        ({"addr": "127.0.0.1:0"}, "memcached", {}, "storage.cache.blobdescriptor"),
        ({"addr": "localhost"}, "inmemory", {}, "grpc.addr"),
        ({"adr": "127.0.0.1:0"}, "inmemory", {}, "grpc.adr"),
        (
            {"addr": "127.0.0.1:0"},
            "inmemory",
            {"DESCRIPTOR_STORAGE_CACHE_BLOBDESCRIPTOR": "arc"},
            "storage.cache.blobdescriptor",
        ),
    ],
)
def test_bad_config_exits_2_with_one_line_naming_the_key(
    tmp_path: Path, grpc_section: dict[str, Any], cache: str, env: dict[str, str], key: str
) -> None:
    config = base_config(tmp_path, cache=cache)
    config["grpc"] = grpc_section
    path = write_config(tmp_path, config)
    proc = run_server(["--config", path], tmp_path, env)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert key in lines[0]
    assert proc.stdout == ""


def test_address_in_use_exits_2_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        addr = f"127.0.0.1:{taken.getsockname()[1]}"
        path = write_config(tmp_path, {**base_config(tmp_path), "grpc": {"addr": addr}})
        proc = run_server(["--config", path], tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert "grpc.addr" in lines[0]
    assert "in use" in lines[0]


def test_check_config_prints_the_effective_config_with_secrets_masked(tmp_path: Path) -> None:
    config = base_config(tmp_path)
    config["redis"] = {"password": "hunter2"}
    path = write_config(tmp_path, config)
    proc = run_server(
        ["--check-config", path],
        tmp_path,
        {"DESCRIPTOR_REDIS_ADDRS": "[a:6379, b:6379]", "DESCRIPTOR_STORAGE_CACHE_BLOBDESCRIPTOR": "none"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "hunter2" not in proc.stdout
    shown = yaml.safe_load(proc.stdout)
    assert shown["redis"]["password"] == "*****"
    assert shown["redis"]["addrs"] == ["a:6379", "b:6379"]
    assert shown["storage"]["cache"]["blobdescriptor"] == "none"
    assert shown["storage"]["filesystem"]["rootdirectory"] == str(tmp_path)
    assert shown["grpc"]["addr"] == "127.0.0.1:0"


def test_console_script_is_the_same_command(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "descriptor-server"
    if not script.exists():
        pytest.skip("the project is not installed into this interpreter's environment")
    path = write_config(tmp_path, {"storage": {"delete": {"enabled": True}}})
    proc = subprocess.run(
        [str(script), "--check-config", path], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout)["storage"]["delete"] == {"enabled": True}


def test_environment_override_reaches_the_running_server(tmp_path: Path, layout: Layout) -> None:
    digest = layout.put_blob(b"uncached")
    proc = ServerProcess(
        base_config(layout.root), tmp_path, env={"DESCRIPTOR_STORAGE_CACHE_BLOBDESCRIPTOR": "none"}
    ).start()
    try:
        assert "cache none" in proc.output
        with DescriptorClient(proc.target) as client:
            client.stat(digest)
            client.stat(digest)
            m = client.metrics()
        assert (m.requests, m.hits, m.misses) == (2, 0, 2)  # nothing cached
    finally:
        proc.stop()


def test_no_argument_default_serves_5051_over_data(tmp_path: Path) -> None:
    if not port_free(5051):
        pytest.skip("127.0.0.1:5051 is in use (another server runs on this machine)")
    digest = Layout(tmp_path / "data").put_blob(b"default")
    proc = ServerProcess({}, tmp_path, args=[])
    env_free = {k: v for k, v in os.environ.items() if not k.startswith("DESCRIPTOR_")}
    proc.env = env_free
    try:
        proc.start()
    except RuntimeError:
        if not port_free(5051):
            pytest.skip("127.0.0.1:5051 was taken by another process while starting")
        raise
    try:
        assert proc.target == "127.0.0.1:5051"
        with DescriptorClient("127.0.0.1:5051") as client:
            assert client.stat(digest) == Descriptor(OCT, digest, 7)
            with pytest.raises(UnsupportedError):
                client.clear(digest)  # deletion is off by default
    finally:
        proc.stop()


def test_interrupt_also_drains_and_exits_0(tmp_path: Path, layout: Layout) -> None:
    proc = ServerProcess(base_config(layout.root), tmp_path).start()
    try:
        proc.signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        proc.stop()
