"""The Python client (README, a first call; docs/client.md), sync and asyncio, against the real server command."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import pytest
from descriptor_client import (
    AsyncDescriptorClient,
    BlobDescriptorService,
    BlobUnknownError,
    DeadlineExceededError,
    Descriptor,
    DescriptorClient,
    DescriptorInvalidError,
    DigestInvalidFormatError,
    DigestUnsupportedError,
    Metrics,
    RepositoryNameInvalidError,
    SyncBlobDescriptorService,
    UnavailableError,
)
from descriptor_client._wire import call_metadata, normalize_target
from helpers.fifo_support import make_fifo, release
from helpers.support import A256, A384, OCT, REPO, Layout, ServerProcess, base_config, refused_port


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Layout]]:
    """One server for the module (deletion enabled); each test uses its own digests."""
    tmp = tmp_path_factory.mktemp("client")
    layout = Layout(tmp / "registry")
    layout.root.mkdir()
    proc = ServerProcess(base_config(layout.root), tmp).start()
    try:
        yield proc, layout
    finally:
        proc.stop()


@pytest.fixture
def target(shared: tuple[ServerProcess, Layout]) -> str:
    return shared[0].target


@pytest.fixture
def disk(shared: tuple[ServerProcess, Layout]) -> Layout:
    return shared[1]


# -- sync ------------------------------------------------------------------------------


def test_sync_client_verbs(target: str, disk: Layout) -> None:
    digest = disk.push(REPO, b"sync client")
    with DescriptorClient(target) as client:
        assert isinstance(client, SyncBlobDescriptorService)
        assert client.stat(digest) == Descriptor(OCT, digest, 11)
        assert client.stat(digest, REPO) == Descriptor(OCT, digest, 11)
        key = "sha512:" + "1" * 128
        client.set_descriptor(key, Descriptor("application/json", A256, 3), "sync/repo")
        assert client.stat(key, "sync/repo") == Descriptor("application/json", A256, 3)
        client.clear(key, "sync/repo")
        with pytest.raises(BlobUnknownError):
            client.stat(key, "sync/repo")
        with pytest.raises(DigestInvalidFormatError):
            client.stat("nope")
        m = client.metrics()
        assert isinstance(m, Metrics)
        assert m.requests >= 4


def test_sync_repository_view(target: str, disk: Layout) -> None:
    digest = disk.push("view/repo", b"viewed")
    with DescriptorClient(target) as client:
        repo = client.repository("view/repo")
        assert isinstance(repo, SyncBlobDescriptorService)
        assert repo.stat(digest) == Descriptor(OCT, digest, 6)
        with pytest.raises(BlobUnknownError):
            client.repository("view/other").stat(digest)
        results = repo.batch_stat([digest, "md5:abc"])
        assert results[0] == Descriptor(OCT, digest, 6)
        assert isinstance(results[1], DigestUnsupportedError)
        repo.clear(digest)
        assert not disk.link("view/repo", digest).exists()
        with pytest.raises(BlobUnknownError):
            repo.stat(digest)
        with pytest.raises(RepositoryNameInvalidError):
            client.repository("Bad/Name").stat(digest)


def test_sync_batch_stat_returns_descriptor_or_exception_per_item(target: str, disk: Layout) -> None:
    a = disk.put_blob(b"batch a")
    b = disk.put_blob(b"batch bb")
    with DescriptorClient(target) as client:
        results = client.batch_stat([b, "sha384:abc", A384, a])
    assert results[0] == Descriptor(OCT, b, 8)
    assert type(results[1]).__name__ == "DigestInvalidLengthError"
    assert isinstance(results[2], BlobUnknownError)
    assert results[3] == Descriptor(OCT, a, 7)


def test_sync_deadline_on_a_call_held_in_flight(target: str, disk: Layout) -> None:
    digest = disk.put_blob(b"held sync")
    fifo = make_fifo(disk.link("held/sync", digest))
    try:
        with DescriptorClient(target) as client, pytest.raises(DeadlineExceededError) as info:
            client.stat(digest, "held/sync", timeout=0.5)
        assert isinstance(info.value, UnavailableError)
        assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert info.value.reason == "DEADLINE_EXCEEDED"
    finally:
        release(fifo, digest)


def test_default_target_from_environment(monkeypatch: pytest.MonkeyPatch, target: str, disk: Layout) -> None:
    monkeypatch.setenv("DESCRIPTOR_TARGET", target)
    digest = disk.put_blob(b"env target")
    with DescriptorClient() as client:
        assert client.target == target
        assert client.stat(digest).size == 10
    monkeypatch.delenv("DESCRIPTOR_TARGET")
    with DescriptorClient() as client:
        assert client.target == "127.0.0.1:5051"


def test_unreachable_server_is_unavailable() -> None:
    with (
        refused_port() as port,
        DescriptorClient(f"127.0.0.1:{port}", timeout=5) as client,
        pytest.raises(UnavailableError),
    ):
        client.stat(A256)


@pytest.mark.parametrize(
    "desc",
    [Descriptor(OCT, A256, 2**63), Descriptor(OCT, A256, -(2**63) - 1), Descriptor("text/\udcff", A256, 1)],
)
def test_descriptor_the_wire_cannot_carry_is_descriptor_invalid(target: str, desc: Descriptor) -> None:
    """A typed error of the contract, not protobuf's ValueError, and nothing is stored."""
    with DescriptorClient(target) as client:
        with pytest.raises(DescriptorInvalidError):
            client.set_descriptor(A256, desc, "wire/limits")
        with pytest.raises(BlobUnknownError):
            client.stat(A256, "wire/limits")


BAD_TEXT = "sha256:\udcff"  # an unpaired surrogate: not UTF-8, so not sendable


def test_text_the_wire_cannot_carry_gets_the_contract_error(target: str, disk: Layout) -> None:
    """The same typed errors a server gives such a digest or name, not protobuf's ValueError."""
    blob = disk.put_blob(b"sendable")
    with DescriptorClient(target) as client:
        with pytest.raises(DigestInvalidFormatError):
            client.stat(BAD_TEXT)
        with pytest.raises(RepositoryNameInvalidError):
            client.stat(A256, "repo\udcff")
        with pytest.raises(DigestInvalidFormatError):  # the key digest is checked first
            client.set_descriptor(BAD_TEXT, Descriptor("text/\udcff", A256, 1))
        with pytest.raises(DigestInvalidFormatError):
            client.clear(BAD_TEXT)
        # In a batch, the unsendable digest fails its own item only, in order.
        first, bad, last = client.batch_stat([blob, BAD_TEXT, blob])
        assert first == last == Descriptor(OCT, blob, 8)
        assert isinstance(bad, DigestInvalidFormatError)
        with pytest.raises(RepositoryNameInvalidError):
            client.batch_stat([blob], "repo\udcff")


async def test_async_client_refuses_unsendable_text_alike(target: str) -> None:
    async with AsyncDescriptorClient(target) as client:
        with pytest.raises(DigestInvalidFormatError):
            await client.stat(BAD_TEXT)
        (bad,) = await client.batch_stat([BAD_TEXT])
        assert isinstance(bad, DigestInvalidFormatError)


# -- token metadata ----------------------------------------------------------------------


def test_token_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DESCRIPTOR_TOKEN", raising=False)
    assert call_metadata(None) is None
    assert call_metadata("abc") == (("authorization", "Bearer abc"),)
    monkeypatch.setenv("DESCRIPTOR_TOKEN", "from-env")
    assert call_metadata(None) == (("authorization", "Bearer from-env"),)
    assert call_metadata("explicit") == (("authorization", "Bearer explicit"),)
    with DescriptorClient("127.0.0.1:1") as client:
        assert client._metadata == (("authorization", "Bearer from-env"),)
    with DescriptorClient("127.0.0.1:1", token="t2") as client:
        assert client._metadata == (("authorization", "Bearer t2"),)
    monkeypatch.setenv("DESCRIPTOR_TOKEN", "")
    assert call_metadata(None) is None


def test_target_normalisation() -> None:
    assert normalize_target("127.0.0.1:5051") == "127.0.0.1:5051"
    assert normalize_target("dns:///cache:5051") == "dns:///cache:5051"
    assert normalize_target("127.0.0.1:1, 127.0.0.1:2") == "ipv4:127.0.0.1:1,127.0.0.1:2"
    assert normalize_target("[::1]:1,[::1]:2") == "ipv6:[::1]:1,[::1]:2"


# -- asyncio ----------------------------------------------------------------------------


async def test_async_client_verbs_and_view(target: str, disk: Layout) -> None:
    digest = disk.push("aio/repo", b"async client")
    async with AsyncDescriptorClient(target) as client:
        assert isinstance(client, BlobDescriptorService)
        assert await client.stat(digest) == Descriptor(OCT, digest, 12)
        repo = client.repository("aio/repo")
        assert isinstance(repo, BlobDescriptorService)
        assert await repo.stat(digest) == Descriptor(OCT, digest, 12)
        key = "sha384:" + "2" * 96
        await repo.set_descriptor(key, Descriptor(OCT, A256, 5))
        assert await repo.stat(key) == Descriptor(OCT, A256, 5)
        results = await repo.batch_stat([key, digest, "", A384])
        assert results[:2] == [Descriptor(OCT, A256, 5), Descriptor(OCT, digest, 12)]
        assert isinstance(results[2], DigestInvalidFormatError)
        assert isinstance(results[3], BlobUnknownError)
        await repo.clear(key)
        with pytest.raises(BlobUnknownError):
            await repo.stat(key)
        before = await client.metrics()
        await client.stat(digest)
        after = await client.metrics()
        assert after.requests == before.requests + 1
        assert after.hits == before.hits + 1


async def test_async_deadline_on_a_call_held_in_flight(target: str, disk: Layout) -> None:
    digest = disk.put_blob(b"held aio")
    fifo = make_fifo(disk.link("held/aio", digest))
    try:
        async with AsyncDescriptorClient(target) as client:
            with pytest.raises(DeadlineExceededError) as info:
                await client.stat(digest, "held/aio", timeout=0.5)
        assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        # Off the event loop: release() waits for the server to open the FIFO.
        t = threading.Thread(target=release, args=(fifo, digest))
        t.start()
        t.join(15)


async def test_async_default_deadline_from_constructor(target: str, disk: Layout) -> None:
    digest = disk.put_blob(b"held default")
    fifo = make_fifo(disk.link("held/default", digest))
    try:
        async with AsyncDescriptorClient(target, timeout=0.5) as client:
            with pytest.raises(DeadlineExceededError):
                await client.stat(digest, "held/default")
    finally:
        t = threading.Thread(target=release, args=(fifo, digest))
        t.start()
        t.join(15)


# -- the asyncio client and its event loop ----------------------------------------------


def test_async_client_made_before_asyncio_run(target: str, disk: Layout) -> None:
    # Made outside any loop (at import time, in a constructor, before asyncio.run()):
    # the channel is made on first use inside the loop that runs the call.
    import asyncio

    digest = disk.push(REPO, b"made before the loop")
    client = AsyncDescriptorClient(target, timeout=10)
    unknown = "sha256:" + "0" * 64

    async def use() -> Descriptor:
        with pytest.raises(BlobUnknownError):
            await client.stat(unknown, REPO)
        assert (await client.batch_stat([digest, unknown], REPO))[1].__class__ is BlobUnknownError
        return await client.stat(digest, REPO)

    assert asyncio.run(use()) == Descriptor(OCT, digest, len(b"made before the loop"))
    # A second asyncio.run() is another loop: the client makes a channel there too.
    assert asyncio.run(use()).digest == digest
    asyncio.run(client.close())


def test_async_client_failures_are_typed_outside_the_first_loop() -> None:
    import asyncio

    with refused_port() as port:
        client = AsyncDescriptorClient(f"127.0.0.1:{port}", timeout=2)

        async def call() -> None:
            with pytest.raises(UnavailableError):
                await client.stat("sha256:" + "0" * 64)
            with pytest.raises(DigestInvalidFormatError):
                await client.stat("sha256:\udc00")

        asyncio.run(call())
        asyncio.run(call())
        asyncio.run(client.close())


def test_async_client_close_before_first_use() -> None:
    import asyncio

    async def open_and_close() -> None:
        client = AsyncDescriptorClient("127.0.0.1:1")
        await client.close()
        await client.close()  # twice is fine
        async with AsyncDescriptorClient("127.0.0.1:1"):
            pass

    asyncio.run(open_and_close())
    asyncio.run(AsyncDescriptorClient("127.0.0.1:1").close())  # made and closed in different states
