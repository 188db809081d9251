"""The filesystem backend over distribution's real on-disk layout (docs/api.md, Caches and backends).

Symbolic links and path confinement are tested in test_confinement.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from descriptor_client import (
    BackendUnavailableError,
    BlobUnknownError,
    Descriptor,
    DigestInvalidFormatError,
    RepositoryNameInvalidError,
    UnsupportedError,
)
from descriptor_server.backends.filesystem import FilesystemBackend
from helpers.support import A256, OCT, REPO, Layout


@pytest.fixture
def fs(backend: FilesystemBackend) -> FilesystemBackend:
    return backend


async def test_global_stat_is_the_data_file_size_and_octet_stream(fs: FilesystemBackend, layout: Layout) -> None:
    content = b"x" * 12345
    for algorithm in ("sha256", "sha384", "sha512"):
        digest = layout.put_blob(content, algorithm)
        assert await fs.stat(digest) == Descriptor(OCT, digest, 12345)
    empty = layout.put_blob(b"")
    assert await fs.stat(empty) == Descriptor(OCT, empty, 0)


async def test_repository_stat_follows_the_link(fs: FilesystemBackend, layout: Layout) -> None:
    digest = layout.push(REPO, b"layer")
    assert await fs.stat(digest, REPO) == Descriptor(OCT, digest, 5)


async def test_link_content_with_a_trailing_newline(fs: FilesystemBackend, layout: Layout) -> None:
    digest = layout.put_blob(b"nl")
    layout.link(REPO, digest).parent.mkdir(parents=True)
    layout.link(REPO, digest).write_text(digest + "\n")
    assert await fs.stat(digest, REPO) == Descriptor(OCT, digest, 2)


async def test_link_in_a_sha512_path_answers_the_canonical_sha256_blob(fs: FilesystemBackend, layout: Layout) -> None:
    canonical = layout.put_blob(b"canonical")
    key = "sha512:" + "ab" * 64
    layout.put_link(REPO, key, canonical)
    assert await fs.stat(key, REPO) == Descriptor(OCT, canonical, 9)
    with pytest.raises(BlobUnknownError):
        await fs.stat(key)  # no blob is stored under the sha512 digest


async def test_missing_link_is_unknown_in_the_repository(fs: FilesystemBackend, layout: Layout) -> None:
    digest = layout.put_blob(b"global only")
    with pytest.raises(BlobUnknownError, match=REPO):
        await fs.stat(digest, REPO)
    with pytest.raises(BlobUnknownError):
        await fs.stat(digest, "other/repo")


async def test_link_to_a_missing_blob_is_unknown(fs: FilesystemBackend, layout: Layout) -> None:
    layout.put_link(REPO, A256)
    with pytest.raises(BlobUnknownError):
        await fs.stat(A256, REPO)


@pytest.mark.parametrize("content", [b"", b"not a digest", b"sha256:abc", b"\xff\xfe", b"sha256:" + b"a" * 5000])
async def test_corrupt_link_is_backend_unavailable(fs: FilesystemBackend, layout: Layout, content: bytes) -> None:
    digest = layout.put_blob(b"data")
    link = layout.link(REPO, digest)
    link.parent.mkdir(parents=True)
    link.write_bytes(content)
    with pytest.raises(BackendUnavailableError) as info:
        await fs.stat(digest, REPO)
    assert info.value.reason == "BACKEND_UNAVAILABLE"
    assert "corrupt link" in info.value.message


async def test_directory_where_the_data_file_should_be_is_unknown(fs: FilesystemBackend, layout: Layout) -> None:
    layout.blob_data(A256).mkdir(parents=True)
    with pytest.raises(BlobUnknownError):
        await fs.stat(A256)
    with pytest.raises(BlobUnknownError):
        await fs.clear(A256)
    assert layout.blob_data(A256).is_dir()


async def test_directory_named_link_is_unknown(fs: FilesystemBackend, layout: Layout) -> None:
    digest = layout.put_blob(b"data")
    layout.link(REPO, digest).mkdir(parents=True)  # a directory named link: EISDIR
    with pytest.raises(BlobUnknownError):
        await fs.stat(digest, REPO)


async def test_repository_clear_deletes_the_link_only(fs: FilesystemBackend, layout: Layout) -> None:
    digest = layout.push(REPO, b"soft")
    await fs.clear(digest, REPO)
    assert not layout.link(REPO, digest).exists()
    # Its directory stays, as distribution's own link delete leaves it: removing it
    # failed a registry push writing the same link meanwhile (500 where the registry
    # alone answers 201: the push racing a delete, tests/interop).
    assert layout.link(REPO, digest).parent.is_dir()
    assert layout.blob_data(digest).read_bytes() == b"soft"
    assert await fs.stat(digest) == Descriptor(OCT, digest, 4)
    with pytest.raises(BlobUnknownError):
        await fs.stat(digest, REPO)


async def test_global_clear_deletes_the_data(fs: FilesystemBackend, layout: Layout) -> None:
    digest = layout.push(REPO, b"hard")
    await fs.clear(digest)
    assert not layout.blob_data(digest).exists()
    with pytest.raises(BlobUnknownError):
        await fs.stat(digest)
    with pytest.raises(BlobUnknownError):
        await fs.stat(digest, REPO)  # the link now points at nothing


async def test_clear_of_unknown_is_blob_unknown(fs: FilesystemBackend) -> None:
    with pytest.raises(BlobUnknownError):
        await fs.clear(A256)
    with pytest.raises(BlobUnknownError):
        await fs.clear(A256, REPO)


async def test_input_is_validated(fs: FilesystemBackend) -> None:
    with pytest.raises(DigestInvalidFormatError):
        await fs.stat("../../etc/passwd")
    with pytest.raises(RepositoryNameInvalidError):
        await fs.stat(A256, "../x")
    with pytest.raises(RepositoryNameInvalidError):
        await fs.clear(A256, "/etc")


async def test_set_descriptor_is_unsupported_and_clear_is_supported(fs: FilesystemBackend) -> None:
    with pytest.raises(UnsupportedError):
        await fs.set_descriptor(A256, Descriptor(OCT, A256, 1))
    assert fs.supports_clear("")
    assert fs.supports_clear(REPO)


async def test_root_need_not_exist_at_start(tmp_path: Path) -> None:
    root = tmp_path / "later"
    backend = FilesystemBackend(str(root))
    try:
        with pytest.raises(BlobUnknownError):
            await backend.stat(A256)
        root.mkdir()
        digest = Layout(root).put_blob(b"arrived")
        assert await backend.stat(digest) == Descriptor(OCT, digest, 7)
    finally:
        await backend.close()
