"""The servicer's own guarantees, on a real grpc.aio server in this process.

A fault no real part produces on demand (a bug raising an unexpected exception) is
injected with a statter subclass; everything else is real.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from descriptor_client import AsyncDescriptorClient, BlobUnknownError, DescriptorError, ServerDrainingError
from descriptor_client.descriptor import Descriptor
from descriptor_server.backends.filesystem import FilesystemBackend
from descriptor_server.caches.inmemory import InMemoryCache
from descriptor_server.core.statter import CachedBlobStatter
from descriptor_server.rpc.servicer import DescriptorServicer
from helpers.support import A256, until


class BuggyStatter(CachedBlobStatter):
    """A statter with a bug: Stat of one digest raises an unexpected exception."""

    async def stat(self, digest: str, repository: str = "") -> Descriptor:
        if digest == A256:
            raise KeyError("a bug")
        return await super().stat(digest, repository)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[DescriptorServicer, str]]:
    backend = FilesystemBackend(str(tmp_path))
    servicer = DescriptorServicer(BuggyStatter(InMemoryCache(10), backend))
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((servicer.generic_handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        await server.stop(None)
        await backend.close()


async def test_unexpected_error_is_internal_and_the_server_keeps_serving(
    served: tuple[DescriptorServicer, str],
) -> None:
    servicer, target = served
    async with AsyncDescriptorClient(target) as client:
        with pytest.raises(DescriptorError) as info:
            await client.stat(A256)
        assert info.value.code == grpc.StatusCode.INTERNAL
        assert info.value.message == "internal error"  # no internals leak to the caller
        with pytest.raises(BlobUnknownError):
            await client.stat("sha256:" + "b" * 64)

    async def inflight() -> int:
        return servicer.inflight

    # The handlers' bookkeeping ends just after their answer is sent: no call stays counted.
    assert await until(inflight, lambda n: n == 0, timeout=10) == 0


async def test_draining_refuses_new_calls(served: tuple[DescriptorServicer, str]) -> None:
    servicer, target = served
    servicer.draining = True
    async with AsyncDescriptorClient(target) as client:
        with pytest.raises(ServerDrainingError) as info:
            await client.stat("sha256:" + "b" * 64)
        assert info.value.code == grpc.StatusCode.UNAVAILABLE

    async def inflight() -> int:
        return servicer.inflight

    # The refusal is sent before the handler's bookkeeping ends: wait for it, bounded.
    assert await until(inflight, lambda n: n == 0, timeout=10) == 0
