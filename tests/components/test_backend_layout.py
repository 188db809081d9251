"""distribution's storage layout, read and cleared through a real server, on every store
that holds it: a directory (``storage.filesystem``) and a bucket (``storage.s3``).

Each test writes the layout as the registry leaves it (blob ``data``, repository
``link``), starts ``descriptor-server --config FILE`` with that backend, and talks to
it through the client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest
from descriptor_client import (
    AsyncDescriptorClient,
    BlobUnknownError,
    Descriptor,
    DigestInvalidFormatError,
    RepositoryNameInvalidError,
)
from helpers.backend_support import S3_ENV, MotoServer, S3Layout, s3_storage
from helpers.support import OCT, REPO, Layout, ServerProcess, digest_of
from helpers.targets_backends import server_config

ROOT = "/var/lib/registry"


class LayoutWriter(Protocol):
    def put_blob(self, content: bytes, algorithm: str = "sha256") -> str: ...
    def put_link(self, repository: str, digest: str, target: str | None = None) -> Any: ...
    def has_blob(self, digest: str) -> bool: ...
    def has_link(self, repository: str, digest: str) -> bool: ...


class FilesystemWriter:
    def __init__(self, root: Path) -> None:
        self.layout = Layout(root)

    def put_blob(self, content: bytes, algorithm: str = "sha256") -> str:
        return self.layout.put_blob(content, algorithm)

    def put_link(self, repository: str, digest: str, target: str | None = None) -> Path:
        return self.layout.put_link(repository, digest, target)

    def has_blob(self, digest: str) -> bool:
        return self.layout.blob_data(digest).exists()

    def has_link(self, repository: str, digest: str) -> bool:
        return self.layout.link(repository, digest).exists()


@dataclass
class Store:
    writer: LayoutWriter
    client: AsyncDescriptorClient


@pytest.fixture(params=["filesystem", "s3"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    writer: LayoutWriter
    env: dict[str, str] = {}
    if request.param == "filesystem":
        root = tmp_path / "registry"
        root.mkdir()
        writer = FilesystemWriter(root)
        storage: dict[str, Any] = {"filesystem": {"rootdirectory": str(root)}}
    else:
        moto: MotoServer = request.getfixturevalue("moto_server")
        s3, bucket = request.getfixturevalue("s3_bucket")
        writer = S3Layout(s3, bucket, ROOT)
        storage = {"s3": s3_storage(moto.endpoint, bucket, ROOT)}
        env = S3_ENV
    proc = ServerProcess(server_config(storage), tmp_path, env=env).start()
    try:
        async with AsyncDescriptorClient(proc.target) as client:
            yield Store(writer, client)
    finally:
        proc.stop()


async def test_global_stat_reads_the_blob_data(store: Store) -> None:
    content = b"layer bytes" * 100
    digest = store.writer.put_blob(content)
    assert await store.client.stat(digest) == Descriptor(OCT, digest, len(content))
    empty = store.writer.put_blob(b"")
    assert await store.client.stat(empty) == Descriptor(OCT, empty, 0)


async def test_repository_stat_follows_the_link(store: Store) -> None:
    content = b"config blob"
    digest = store.writer.put_blob(content)
    store.writer.put_link(REPO, digest)
    assert await store.client.stat(digest, REPO) == Descriptor(OCT, digest, len(content))
    # Another repository does not hold it, even though the blob exists globally.
    with pytest.raises(BlobUnknownError):
        await store.client.stat(digest, "other/repo")


async def test_link_content_is_the_canonical_digest(store: Store) -> None:
    content = b"aliased"
    canonical = store.writer.put_blob(content)
    alias = digest_of(content, "sha512")
    store.writer.put_link(REPO, alias, target=canonical)
    assert await store.client.stat(alias, REPO) == Descriptor(OCT, canonical, len(content))


async def test_link_without_blob_is_unknown(store: Store) -> None:
    digest = digest_of(b"never uploaded")
    store.writer.put_link(REPO, digest)
    with pytest.raises(BlobUnknownError):
        await store.client.stat(digest, REPO)


async def test_repository_clear_removes_the_link_only(store: Store) -> None:
    digest = store.writer.put_blob(b"to be unlinked")
    store.writer.put_link(REPO, digest)
    await store.client.stat(digest, REPO)  # now cached too
    await store.client.clear(digest, REPO)
    assert not store.writer.has_link(REPO, digest)
    assert store.writer.has_blob(digest)
    with pytest.raises(BlobUnknownError):
        await store.client.stat(digest, REPO)
    assert (await store.client.stat(digest)).digest == digest
    with pytest.raises(BlobUnknownError):
        await store.client.clear(digest, REPO)


async def test_global_clear_removes_the_data(store: Store) -> None:
    digest = store.writer.put_blob(b"to be deleted")
    await store.client.stat(digest)
    await store.client.clear(digest)
    assert not store.writer.has_blob(digest)
    with pytest.raises(BlobUnknownError):
        await store.client.stat(digest)


async def test_unknown_digest(store: Store) -> None:
    digest = digest_of(b"nowhere")
    with pytest.raises(BlobUnknownError):
        await store.client.stat(digest)
    with pytest.raises(BlobUnknownError):
        await store.client.stat(digest, REPO)
    with pytest.raises(BlobUnknownError):
        await store.client.clear(digest)


async def test_bad_input_never_reaches_the_store(store: Store) -> None:
    with pytest.raises(DigestInvalidFormatError):
        await store.client.stat("sha256:" + "../" * 21 + "x")
    with pytest.raises(RepositoryNameInvalidError):
        await store.client.stat(digest_of(b"x"), "../escape")
