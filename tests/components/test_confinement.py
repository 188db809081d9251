"""The filesystem backend never reads or deletes outside its root (docs/api.md, Caches and backends).

Real directories and real symbolic links: a repository or blob directory linked out
of the root, a link file linked to a file outside, names with ``..`` or absolute
paths. Each outside file holds something the backend would happily serve if it
followed the link (a valid digest, a blob), so a hole would show as an answer.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from descriptor_client import (
    AsyncDescriptorClient,
    BlobUnknownError,
    DescriptorError,
    DigestInvalidFormatError,
    DigestInvalidLengthError,
    InvalidArgumentError,
    RepositoryNameInvalidError,
)
from descriptor_server.backends.filesystem import FilesystemBackend
from helpers.support import Layout, ServerProcess, base_config, digest_of

CONTENT = b"layer bytes"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    path = tmp_path / "outside"
    path.mkdir()
    return path


def relative(path: Path, start: Path) -> str:
    """``path`` relative to ``start``: a link climbing out with ``..``."""
    return os.path.relpath(path, start)


def outside_layout(outside: Path) -> Layout:
    """A complete, valid registry tree outside the root: what a followed link would find."""
    return Layout(outside / "other-registry")


async def test_repository_directory_linked_out_of_the_root(
    layout: Layout, backend: FilesystemBackend, outside: Path
) -> None:
    other = outside_layout(outside)
    digest = other.push("evil/repo", CONTENT)
    layout.put_blob(CONTENT)  # the blob itself is inside: only the link is outside
    repos = layout.root / "docker/registry/v2/repositories"
    repos.mkdir(parents=True)
    (repos / "evil").symlink_to(other.root / "docker/registry/v2/repositories/evil")

    with pytest.raises(BlobUnknownError):
        await backend.stat(digest, "evil/repo")
    with pytest.raises(BlobUnknownError):
        await backend.clear(digest, "evil/repo")
    assert other.link("evil/repo", digest).read_text() == digest
    assert (repos / "evil").is_symlink()


async def test_blob_directory_linked_out_of_the_root(layout: Layout, backend: FilesystemBackend, outside: Path) -> None:
    other = outside_layout(outside)
    digest = other.put_blob(CONTENT)
    shard = layout.blob_data(digest).parent.parent  # blobs/sha256/<hex[:2]>
    shard.parent.mkdir(parents=True)
    shard.symlink_to(other.blob_data(digest).parent.parent)

    with pytest.raises(BlobUnknownError):
        await backend.stat(digest)
    with pytest.raises(BlobUnknownError):
        await backend.clear(digest)
    assert other.blob_data(digest).read_bytes() == CONTENT


async def test_blob_data_file_linked_out_of_the_root(layout: Layout, backend: FilesystemBackend, outside: Path) -> None:
    secret = outside / "secret"
    secret.write_bytes(b"x" * 12345)
    digest = digest_of(b"whatever")
    data = layout.blob_data(digest)
    data.parent.mkdir(parents=True)
    data.symlink_to(secret)

    with pytest.raises(BlobUnknownError):  # not a size of 12345: the file is never stat'ed
        await backend.stat(digest)
    with pytest.raises(BlobUnknownError):
        await backend.clear(digest)
    assert secret.read_bytes() == b"x" * 12345


async def test_link_file_linked_to_a_file_outside(layout: Layout, backend: FilesystemBackend, outside: Path) -> None:
    digest = layout.put_blob(CONTENT)
    planted = outside / "planted-link"
    planted.write_text(digest)  # a perfectly valid link content, were it read
    link = layout.link("foo/bar", digest)
    link.parent.mkdir(parents=True)
    link.symlink_to(planted)

    with pytest.raises(BlobUnknownError):
        await backend.stat(digest, "foo/bar")
    with pytest.raises(BlobUnknownError):
        await backend.clear(digest, "foo/bar")
    assert planted.read_text() == digest
    assert layout.blob_data(digest).read_bytes() == CONTENT


@pytest.mark.skipif(not os.path.exists("/etc/passwd"), reason="no /etc/passwd on this machine")
async def test_link_file_linked_to_etc_passwd_is_not_read(layout: Layout, backend: FilesystemBackend) -> None:
    digest = layout.put_blob(CONTENT)
    link = layout.link("foo/bar", digest)
    link.parent.mkdir(parents=True)
    link.symlink_to("/etc/passwd")
    # Were the file read, its content (not a digest) would answer BACKEND_UNAVAILABLE
    # "corrupt link"; confined, the link simply does not exist in the root.
    with pytest.raises(BlobUnknownError):
        await backend.stat(digest, "foo/bar")
    with pytest.raises(BlobUnknownError):
        await backend.clear(digest, "foo/bar")
    assert link.is_symlink()


async def test_relative_link_climbing_out_with_dotdot(
    layout: Layout, backend: FilesystemBackend, outside: Path
) -> None:
    other = outside_layout(outside)
    digest = other.push("foo/bar", CONTENT)
    layout.put_blob(CONTENT)
    link = layout.link("foo/bar", digest)
    link.parent.mkdir(parents=True)
    link.symlink_to(relative(other.link("foo/bar", digest), link.parent))
    assert link.read_text() == digest  # the link does lead out of the root

    with pytest.raises(BlobUnknownError):
        await backend.stat(digest, "foo/bar")
    with pytest.raises(BlobUnknownError):
        await backend.clear(digest, "foo/bar")
    assert other.link("foo/bar", digest).exists()


async def test_clear_removes_a_symlink_itself_never_its_target(layout: Layout, backend: FilesystemBackend) -> None:
    """A link inside the root that points at another file inside: Clear unlinks the link only."""
    digest = layout.push("team/origin", CONTENT)
    target = layout.link("team/origin", digest)
    alias = layout.link("team/alias", digest)
    alias.parent.mkdir(parents=True)
    alias.symlink_to(target)

    assert (await backend.stat(digest, "team/alias")).size == len(CONTENT)
    await backend.clear(digest, "team/alias")
    assert not alias.is_symlink()
    assert target.read_text() == digest
    assert (await backend.stat(digest, "team/origin")).size == len(CONTENT)

    data_alias = layout.blob_data(digest_of(b"alias"))
    data_alias.parent.mkdir(parents=True)
    data_alias.symlink_to(layout.blob_data(digest))
    await backend.clear(digest_of(b"alias"))
    assert not data_alias.is_symlink()
    assert layout.blob_data(digest).read_bytes() == CONTENT


async def test_root_reached_through_a_symlink_still_serves(layout: Layout, tmp_path: Path) -> None:
    digest = layout.push("foo/bar", CONTENT)
    via = tmp_path / "registry-link"
    via.symlink_to(layout.root)
    fs = FilesystemBackend(str(via))
    try:
        assert (await fs.stat(digest, "foo/bar")).size == len(CONTENT)
        await fs.clear(digest, "foo/bar")
        assert not layout.link("foo/bar", digest).exists()
    finally:
        await fs.close()


@pytest.mark.parametrize(
    "repository",
    ["../x", "/etc", "foo/../../x", "foo/./bar", "foo//bar", "..", ".", "foo/bar/..", "a/" * 130 + "b"],
)
async def test_path_like_repository_names_are_refused(backend: FilesystemBackend, repository: str) -> None:
    digest = digest_of(CONTENT)
    with pytest.raises(RepositoryNameInvalidError):
        await backend.stat(digest, repository)
    with pytest.raises(RepositoryNameInvalidError):
        await backend.clear(digest, repository)


@pytest.mark.parametrize(
    ("digest", "error"),
    [
        ("sha256:../../../../etc/passwd", DigestInvalidLengthError),
        ("../sha256:" + "a" * 64, DigestInvalidFormatError),
        ("sha256/" + "a" * 64, DigestInvalidFormatError),
        ("/etc:" + "a" * 64, DigestInvalidFormatError),
        ("sha256:" + "a" * 62 + "/..", DigestInvalidLengthError),
    ],
)
async def test_path_like_digests_are_refused(
    backend: FilesystemBackend, digest: str, error: type[InvalidArgumentError]
) -> None:
    with pytest.raises(error):
        await backend.stat(digest)
    with pytest.raises(error):
        await backend.clear(digest, "foo/bar")


async def test_escapes_refused_through_the_server(layout: Layout, tmp_path: Path, outside: Path) -> None:
    other = outside_layout(outside)
    digest = other.push("evil/repo", CONTENT)
    layout.put_blob(CONTENT)
    repos = layout.root / "docker/registry/v2/repositories"
    repos.mkdir(parents=True)
    (repos / "evil").symlink_to(other.root / "docker/registry/v2/repositories/evil")
    secret_digest = digest_of(b"secret")
    data = layout.blob_data(secret_digest)
    data.parent.mkdir(parents=True)
    data.symlink_to(other.blob_data(digest))

    proc = ServerProcess(base_config(layout.root), tmp_path).start()
    try:
        async with AsyncDescriptorClient(proc.target, timeout=10) as client:
            for call in (
                client.stat(digest, "evil/repo"),
                client.clear(digest, "evil/repo"),
                client.stat(secret_digest),
                client.clear(secret_digest),
            ):
                with pytest.raises(BlobUnknownError):
                    await call
            with pytest.raises(DescriptorError) as info:
                await client.stat(digest, "../evil")
            assert info.value.reason == "REPOSITORY_NAME_INVALID"
    finally:
        proc.stop()
    assert other.link("evil/repo", digest).read_text() == digest
    assert other.blob_data(digest).read_bytes() == CONTENT
