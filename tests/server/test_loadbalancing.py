"""Client-side load balancing over replicas, and retries of UNAVAILABLE (docs/other-languages.md; docs/client.md).

The Python client's gRPC service config asks for ``round_robin`` over every address
of the target and retries UNAVAILABLE (a draining or restarting replica). These tests
run two real servers over one registry layout and a client with both addresses.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path

import grpc
import pytest
from descriptor_client import (
    AsyncDescriptorClient,
    Descriptor,
    DescriptorClient,
    ServerDrainingError,
    UnavailableError,
)
from descriptor_client._proto.descriptor.v1 import descriptor_pb2 as pb
from descriptor_client._wire import normalize_target
from descriptor_client.errors import from_rpc_error
from descriptor_client.rpcs import RPCS
from helpers.support import REPO, Layout, ServerProcess, base_config, running_server, wait_for

BLOB = b"a layer both replicas can see\n"
CALLS = 20


@pytest.fixture
def replicas(tmp_path: Path, layout: Layout) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two servers over the same storage (a bounded drain, so a stuck call cannot hang a test)."""
    servers = []
    try:
        for name in ("one", "two"):
            (tmp_path / name).mkdir()
            servers.append(ServerProcess(base_config(layout.root, drain="20s"), tmp_path / name).start())
        yield servers[0], servers[1]
    finally:
        for server in servers:
            server.stop()


NO_RETRY = [("grpc.service_config", '{"loadBalancingConfig": [{"round_robin": {}}]}'), ("grpc.enable_retries", 0)]


def try_stat(channel: grpc.Channel, digest: str) -> str:
    """One Stat on a bare channel: no retry policy, and none of the client's own retries."""
    stat = channel.unary_unary(
        RPCS["Stat"].path,
        request_serializer=pb.StatRequest.SerializeToString,
        response_deserializer=pb.StatResponse.FromString,
    )
    try:
        stat(pb.StatRequest(digest=digest), timeout=10)
    except grpc.RpcError as err:
        return from_rpc_error(err).reason
    return "ok"


def requests_on(server: ServerProcess) -> int:
    with DescriptorClient(server.target, timeout=10) as client:
        return client.metrics().requests


def both(replicas: tuple[ServerProcess, ServerProcess]) -> str:
    return ",".join(s.target for s in replicas)


@pytest.mark.parametrize(
    ("target", "want"),
    [
        ("127.0.0.1:1,127.0.0.1:2", "ipv4:127.0.0.1:1,127.0.0.1:2"),
        ("a:1, b:2", "ipv4:a:1,b:2"),
        ("[::1]:1,[::1]:2", "ipv6:[::1]:1,[::1]:2"),
        ("dns:///registry-cache:5051", "dns:///registry-cache:5051"),
        ("127.0.0.1:5051", "127.0.0.1:5051"),
        ("ipv4:127.0.0.1:1,127.0.0.1:2", "ipv4:127.0.0.1:1,127.0.0.1:2"),
    ],
)
def test_normalize_target(target: str, want: str) -> None:
    assert normalize_target(target) == want


def test_calls_are_spread_over_both_replicas(replicas: tuple[ServerProcess, ServerProcess], layout: Layout) -> None:
    digest = layout.push(REPO, BLOB)
    want = Descriptor("application/octet-stream", digest, len(BLOB))
    with DescriptorClient(both(replicas), timeout=10) as client:
        # Until both connections are up, round robin only has the ready one.
        def both_served() -> bool:
            assert client.stat(digest) == want
            return all(requests_on(s) > 0 for s in replicas)

        wait_for(both_served, timeout=15)
        before = [requests_on(s) for s in replicas]
        for _ in range(CALLS):
            assert client.stat(digest) == want
        served = [requests_on(s) - b for s, b in zip(replicas, before, strict=True)]
    assert sum(served) == CALLS
    # Round robin with both replicas ready alternates between them.
    assert min(served) >= CALLS // 2 - 2, served


async def test_async_client_balances_too(replicas: tuple[ServerProcess, ServerProcess], layout: Layout) -> None:
    digest = layout.push(REPO, BLOB)
    async with AsyncDescriptorClient(both(replicas), timeout=10) as client:
        for _ in range(50):
            await client.stat(digest, REPO)
            if all(requests_on(s) > 0 for s in replicas):
                break
    assert all(requests_on(s) > 0 for s in replicas)


def test_dns_target(replicas: tuple[ServerProcess, ServerProcess], layout: Layout) -> None:
    digest = layout.push(REPO, BLOB)
    server = replicas[0]
    before = requests_on(server)
    with DescriptorClient(f"dns:///localhost:{server.port}", timeout=10) as client:
        assert client.stat(digest, REPO) == Descriptor("application/octet-stream", digest, len(BLOB))
    assert requests_on(server) == before + 1


class HeldCall:
    """A repository Stat kept in flight on a server: its link file is a FIFO with no writer.

    The filesystem backend blocks in ``open()`` until a writer appears, as on a hung
    disk, so the server has a call in flight while it drains.
    """

    def __init__(self, layout: Layout, server: ServerProcess, digest: str) -> None:
        self.link = layout.link("held/repo", digest)
        self.link.parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(self.link)
        self.digest = digest
        self.server = server
        self.pool = ThreadPoolExecutor(1)
        self.client = DescriptorClient(server.target, timeout=60)
        self.future: Future[Descriptor] | None = None
        self.fd = -1

    def start(self) -> None:
        self.future = self.pool.submit(self.client.stat, self.digest, "held/repo")

        def reader_waiting() -> bool:
            # Opening the write end without blocking succeeds once the server opened the read end.
            try:
                self.fd = os.open(self.link, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                return False
            return True

        wait_for(reader_waiting, timeout=15)

    def release(self) -> Descriptor:
        assert self.future is not None
        os.write(self.fd, self.digest.encode())
        os.close(self.fd)
        self.fd = -1
        return self.future.result(timeout=30)

    def close(self) -> None:
        # Unblock the server whatever happened: end of file for a reader still waiting.
        with suppress(OSError):
            os.close(self.fd if self.fd >= 0 else os.open(self.link, os.O_WRONLY | os.O_NONBLOCK))
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()


def test_a_draining_replica_is_retried_on_the_other(
    replicas: tuple[ServerProcess, ServerProcess], layout: Layout
) -> None:
    one, two = replicas
    digest = layout.push(REPO, BLOB)
    want = Descriptor("application/octet-stream", digest, len(BLOB))
    held = HeldCall(layout, two, digest)
    with DescriptorClient(both(replicas), timeout=10) as client:
        try:
            wait_for(lambda: client.stat(digest) == want and all(requests_on(s) > 0 for s in replicas), timeout=15)
            held.start()
            two.signal()  # SIGTERM: two drains, with the held call in flight
            wait_for(lambda: "draining" in two.output, timeout=15)
            # A client that does not watch health (ours leave a NOT_SERVING replica) is refused.
            direct = DescriptorClient(two.target, timeout=10, options=[("grpc.inhibit_health_checking", 1)])
            with direct, pytest.raises(ServerDrainingError):
                direct.stat(digest)

            before = requests_on(one)
            for _ in range(CALLS):
                assert client.stat(digest, REPO) == want
            assert requests_on(one) - before == CALLS

            # Control: the same balancing without any retry hands out the refusals.
            # (Bounded: until round robin has reached the draining replica once.)
            outcomes: list[str] = []
            with grpc.insecure_channel(normalize_target(both(replicas)), options=NO_RETRY) as bare:
                while "SERVER_DRAINING" not in outcomes and len(outcomes) < 200:
                    outcomes.append(try_stat(bare, digest))
            assert "SERVER_DRAINING" in outcomes, outcomes
            assert set(outcomes) <= {"ok", "SERVER_DRAINING"}, outcomes

            assert held.release() == want  # the call in flight finishes
            assert two.wait(timeout=30) == 0
        finally:
            held.close()

        # With two gone, every call goes to one.
        before = requests_on(one)
        for _ in range(CALLS):
            assert client.stat(digest) == want
        assert requests_on(one) - before == CALLS


def by_name(replicas: tuple[ServerProcess, ServerProcess]) -> str:
    """Both replicas by host name (``localhost``), as an operator writes a fleet."""
    return ",".join(f"localhost:{s.port}" for s in replicas)


def test_host_names_in_a_list_are_resolved(replicas: tuple[ServerProcess, ServerProcess], layout: Layout) -> None:
    """``gRPC``'s ``ipv4:`` list takes IP literals only: names are resolved by the client."""
    digest = layout.push(REPO, BLOB)
    want = Descriptor("application/octet-stream", digest, len(BLOB))
    with DescriptorClient(by_name(replicas), timeout=10) as client:
        assert client.target == "ipv4:" + by_name(replicas)  # what the caller asked for
        assert "localhost" not in client.dial_target

        def both_served() -> bool:
            assert client.stat(digest, REPO) == want
            return all(requests_on(s) > 0 for s in replicas)

        wait_for(both_served, timeout=15)


async def test_async_client_resolves_names_too(replicas: tuple[ServerProcess, ServerProcess], layout: Layout) -> None:
    digest = layout.push(REPO, BLOB)
    async with AsyncDescriptorClient(by_name(replicas), timeout=10) as client:
        assert await client.stat(digest, REPO) == Descriptor("application/octet-stream", digest, len(BLOB))


def test_a_name_that_does_not_resolve_is_left_out(
    replicas: tuple[ServerProcess, ServerProcess], layout: Layout
) -> None:
    digest = layout.push(REPO, BLOB)
    target = f"no-such-replica.invalid:{replicas[0].port},localhost:{replicas[1].port}"
    with DescriptorClient(target, timeout=10) as client:
        assert client.stat(digest, REPO).digest == digest


def test_no_name_resolves_is_a_clear_error() -> None:
    with pytest.raises(UnavailableError) as info:
        DescriptorClient("no-such-replica.invalid:1,nor-this.invalid:2")
    assert "no-such-replica.invalid" in str(info.value)
    assert "nor-this.invalid" in str(info.value)


def test_descriptorctl_and_the_chained_backend_take_names(
    replicas: tuple[ServerProcess, ServerProcess], layout: Layout, tmp_path: Path
) -> None:
    digest = layout.push(REPO, BLOB)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DESCRIPTOR_")}
    done = subprocess.run(
        [sys.executable, "-m", "descriptor_client.cli", "--target", by_name(replicas), "stat", digest, "-r", REPO],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.startswith(digest)

    # A service in front of both replicas, its descriptorservice target a list of names.
    front_config = base_config(layout.root)
    front_config["storage"] = {
        "descriptorservice": {"target": by_name(replicas), "timeout": "5s"},
        "cache": {"blobdescriptor": "inmemory"},
    }
    (tmp_path / "front").mkdir()
    with running_server(front_config, tmp_path / "front") as front, DescriptorClient(front.target) as client:
        assert client.stat(digest, REPO) == Descriptor("application/octet-stream", digest, len(BLOB))
