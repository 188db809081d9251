"""The Revalidate RPC: the backend decides, now, and the cache follows.

Real parts: the server process over distribution's on-disk layout (deletion disabled,
to show Revalidate does not need it), the sync and asyncio clients.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from descriptor_client import AsyncDescriptorClient, BlobUnknownError, DescriptorClient, DigestInvalidLengthError
from helpers.support import OCT, REPO, Layout, base_config, running_server


def test_revalidate_removes_what_the_backend_lost_and_refills_what_it_holds(tmp_path: Path, layout: Layout) -> None:
    content = b"a layer the garbage collector removes"
    digest = layout.push(REPO, content)
    with (
        running_server(base_config(layout.root, delete=False), tmp_path) as server,
        DescriptorClient(server.target, timeout=10) as client,
    ):
        repo = client.repository(REPO)
        assert repo.stat(digest).size == len(content)  # now cached in the repository and globally
        assert client.stat(digest).size == len(content)
        # Removed behind the service's back, as distribution's garbage collector does.
        shutil.rmtree(layout.blob_data(digest).parent)
        assert repo.stat(digest).size == len(content)  # the cache still answers: stale

        with pytest.raises(BlobUnknownError) as info:
            repo.revalidate(digest)
        assert info.value.reason == "BLOB_UNKNOWN"
        with pytest.raises(BlobUnknownError):
            repo.stat(digest)
        with pytest.raises(BlobUnknownError):
            client.stat(digest)  # the repository's removal takes the global entry too
        with pytest.raises(BlobUnknownError):
            repo.revalidate(digest)  # idempotent

        # Pushed again: Revalidate answers and primes the cache.
        assert layout.push(REPO, content) == digest
        desc = client.revalidate(digest, REPO)
        assert (desc.digest, desc.media_type, desc.size) == (digest, OCT, len(content))
        before = client.metrics()
        assert repo.stat(digest) == desc
        after = client.metrics()
        assert (after.hits - before.hits, after.misses - before.misses) == (1, 0)

        with pytest.raises(DigestInvalidLengthError):
            client.revalidate("sha384:abc")


def test_revalidate_in_a_repository_that_never_held_the_blob_changes_nothing(tmp_path: Path, layout: Layout) -> None:
    """Revalidate needs pull access only: in a repository that holds nothing of the digest it
    must not drop (or fence) the global entry every other repository is answered from, as a
    repository Clear answering BLOB_UNKNOWN changes nothing."""
    content = b"a layer another repository holds"
    digest = layout.push(REPO, content)
    with (
        running_server(base_config(layout.root, delete=False), tmp_path) as server,
        DescriptorClient(server.target, timeout=10) as client,
    ):
        assert client.repository(REPO).stat(digest).size == len(content)  # cached, global entry too
        with pytest.raises(BlobUnknownError):
            client.revalidate(digest, "attacker/empty")
        before = client.metrics()
        assert client.stat(digest).size == len(content)
        assert client.repository(REPO).stat(digest).size == len(content)
        after = client.metrics()
        assert (after.hits - before.hits, after.misses - before.misses) == (2, 0)  # still cached


def test_the_asyncio_client_revalidates(tmp_path: Path, layout: Layout) -> None:
    digest = layout.push(REPO, b"async")

    async def scenario(target: str) -> None:
        async with AsyncDescriptorClient(target, timeout=10) as client:
            repo = client.repository(REPO)
            assert (await repo.revalidate(digest)).digest == digest
            layout.link(REPO, digest).unlink()
            with pytest.raises(BlobUnknownError):
                await repo.revalidate(digest)
            with pytest.raises(BlobUnknownError):
                await client.stat(digest, REPO)

    with running_server(base_config(layout.root, delete=False), tmp_path) as server:
        asyncio.run(scenario(server.target))
