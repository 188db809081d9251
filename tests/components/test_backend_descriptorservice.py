"""The ``descriptorservice`` backend: two of our servers chained, front -> back.

The conformance suite runs through the front one as ``target_server_chained``; this
file covers what the chain adds: answers and clears reaching the back server's store,
the front's own cache, errors, TLS with a client certificate, and the token.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from descriptor_client import (
    AsyncDescriptorClient,
    BackendUnavailableError,
    BlobUnknownError,
    Descriptor,
    DescriptorClient,
    UnsupportedError,
)
from descriptor_server.security import token_hash
from helpers.backend_support import health_of
from helpers.pki import CA
from helpers.support import OCT, REPO, Layout, ServerProcess, base_config, digest_of, running_server, wait_for
from helpers.targets_backends import server_config

TOKEN = "front-to-back-token"
READ_ONLY = "read-only-token"


def front_config(target: str, **section: Any) -> dict[str, Any]:
    return server_config({"descriptorservice": {"target": target, "timeout": "3s", **section}})


@pytest.fixture
def back_layout(tmp_path: Path) -> Layout:
    root = tmp_path / "back-root"
    root.mkdir()
    return Layout(root)


@contextmanager
def _serve(config: dict[str, Any], workdir: Path) -> Iterator[ServerProcess]:
    workdir.mkdir()
    proc = ServerProcess(config, workdir).start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def back(tmp_path: Path, back_layout: Layout) -> Iterator[ServerProcess]:
    with _serve(base_config(back_layout.root), tmp_path / "back") as proc:
        yield proc


def test_front_answers_from_the_back_store_and_caches(tmp_path: Path, back: ServerProcess, back_layout: Layout) -> None:
    content = b"a layer in the central registry"
    digest = back_layout.push(REPO, content)
    want = Descriptor(OCT, digest, len(content))
    with (
        running_server(front_config(back.target), tmp_path) as front,
        DescriptorClient(front.target) as client,
        DescriptorClient(back.target) as central,
    ):
        assert client.stat(digest, REPO) == want
        assert client.stat(digest, REPO) == want
        assert client.stat(digest) == want  # set by the repository miss
        with pytest.raises(BlobUnknownError):
            client.stat(digest, "other/repo")
        edge = client.metrics()
        assert (edge.requests, edge.hits, edge.misses) == (4, 2, 2)
        # Only the two misses reached the central service.
        assert central.metrics().requests == 2


def test_front_clear_reaches_the_back_store(tmp_path: Path, back: ServerProcess, back_layout: Layout) -> None:
    digest = back_layout.push(REPO, b"to be unlinked")
    with running_server(front_config(back.target), tmp_path) as front, DescriptorClient(front.target) as client:
        client.stat(digest, REPO)
        client.clear(digest, REPO)
        assert not back_layout.link(REPO, digest).exists()
        assert back_layout.blob_data(digest).exists()
        with pytest.raises(BlobUnknownError):
            client.stat(digest, REPO)
        client.clear(digest)
        assert not back_layout.blob_data(digest).exists()
        with pytest.raises(BlobUnknownError):
            client.clear(digest)


def test_back_down_is_backend_unavailable(tmp_path: Path, back: ServerProcess) -> None:
    config = front_config(back.target)
    config["grpc"]["healthprobeinterval"] = "100ms"
    with running_server(config, tmp_path) as front, DescriptorClient(front.target) as client:
        assert health_of(front.target) == "SERVING"
        with pytest.raises(BlobUnknownError):
            client.stat(digest_of(b"x"), REPO)
        back.stop()
        wait_for(lambda: health_of(front.target) == "NOT_SERVING")
        with pytest.raises(BackendUnavailableError):
            client.stat(digest_of(b"y"), REPO)
        with pytest.raises(BackendUnavailableError):
            client.clear(digest_of(b"y"), REPO)


def test_back_with_deletion_disabled_is_unsupported(tmp_path: Path, back_layout: Layout) -> None:
    digest = back_layout.push(REPO, b"kept")
    with (
        _serve(base_config(back_layout.root, delete=False), tmp_path / "back") as back,
        running_server(front_config(back.target), tmp_path) as front,
        DescriptorClient(front.target) as client,
    ):
        with pytest.raises(UnsupportedError):
            client.clear(digest, REPO)
        assert back_layout.link(REPO, digest).exists()


async def test_backend_passes_a_late_unsupported_through(tmp_path: Path, back_layout: Layout) -> None:
    # The back service says UNSUPPORTED only when the Clear reaches it: the backend
    # passes it through as UnsupportedError (never BACKEND_UNAVAILABLE).
    from descriptor_server.backends.descriptorservice import DescriptorServiceBackend

    digest = back_layout.push(REPO, b"kept")
    with _serve(base_config(back_layout.root, delete=False), tmp_path / "back") as back:
        backend = DescriptorServiceBackend(AsyncDescriptorClient(back.target, timeout=5))
        try:
            assert backend.supports_clear(REPO)
            with pytest.raises(UnsupportedError) as info:
                await backend.clear(digest, REPO)
            assert "storage.delete.enabled" in info.value.message
            assert (await backend.stat(digest, REPO)).digest == digest
        finally:
            await backend.close()
    assert back_layout.link(REPO, digest).exists()


def test_unsupported_clear_leaves_the_front_cache_as_it_was(tmp_path: Path, back_layout: Layout) -> None:
    digest = back_layout.push(REPO, b"still cached")
    with (
        _serve(base_config(back_layout.root, delete=False), tmp_path / "back") as back,
        running_server(front_config(back.target), tmp_path) as front,
        DescriptorClient(front.target) as client,
    ):
        client.stat(digest, REPO)  # a miss: now cached in the front
        with pytest.raises(UnsupportedError):
            client.clear(digest, REPO)
        before = client.metrics()
        assert client.stat(digest, REPO).digest == digest
        after = client.metrics()
        assert after.hits - before.hits == 1  # answered by the front cache, as before


@pytest.fixture
def secure_back(tmp_path: Path, back_layout: Layout) -> Iterator[tuple[ServerProcess, CA]]:
    """The back server with mutual TLS and bearer tokens (one write, one read-only)."""
    pki = tmp_path / "pki"
    pki.mkdir()
    ca = CA(pki, "central-ca")
    server = ca.issue("central", dns=("descriptor.central",))
    config = base_config(back_layout.root)
    config["grpc"]["tls"] = {"certificate": str(server.cert), "key": str(server.key), "clientcas": [str(ca.pem)]}
    config["auth"] = {
        "tokens": [
            {"name": "edge", "scope": "write", "sha256": token_hash(TOKEN)},
            {"name": "reader", "scope": "read", "sha256": token_hash(READ_ONLY)},
        ]
    }
    with _serve(config, tmp_path / "back") as proc:
        yield proc, ca


def _tls_section(tmp_path: Path, ca: CA) -> dict[str, Any]:
    client = ca.issue("edge", client=True)
    return {
        "enabled": True,
        "ca": str(ca.pem),
        "certificate": str(client.cert),
        "key": str(client.key),
        "servername": "descriptor.central",
    }


def test_mutual_tls_and_token(tmp_path: Path, secure_back: tuple[ServerProcess, CA], back_layout: Layout) -> None:
    back, ca = secure_back
    digest = back_layout.push(REPO, b"over mTLS")
    config = front_config(back.target, token=TOKEN, tls=_tls_section(tmp_path, ca))
    with running_server(config, tmp_path) as front, DescriptorClient(front.target) as client:
        assert client.stat(digest, REPO) == Descriptor(OCT, digest, len(b"over mTLS"))
        client.clear(digest, REPO)
        assert not back_layout.link(REPO, digest).exists()


@pytest.mark.parametrize("token", ["", "wrong-token", READ_ONLY])
def test_refused_by_the_back_is_backend_unavailable(
    tmp_path: Path, secure_back: tuple[ServerProcess, CA], back_layout: Layout, token: str
) -> None:
    """The front's caller is not the one lacking credentials: the front is misconfigured."""
    back, ca = secure_back
    digest = back_layout.push(REPO, b"guarded")
    config = front_config(back.target, token=token, tls=_tls_section(tmp_path, ca))
    with running_server(config, tmp_path) as front, DescriptorClient(front.target) as client:
        if token == READ_ONLY:
            assert client.stat(digest, REPO).digest == digest
        else:
            with pytest.raises(BackendUnavailableError):
                client.stat(digest, REPO)
        with pytest.raises(BackendUnavailableError):
            client.clear(digest, REPO)
        assert back_layout.link(REPO, digest).exists()


def test_plaintext_front_to_a_tls_back_is_backend_unavailable(
    tmp_path: Path, secure_back: tuple[ServerProcess, CA]
) -> None:
    back, _ = secure_back
    with (
        running_server(front_config(back.target, token=TOKEN), tmp_path) as front,
        DescriptorClient(front.target) as client,
        pytest.raises(BackendUnavailableError),
    ):
        client.stat(digest_of(b"x"), REPO)


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"target": ""}, "storage.descriptorservice.target"),
        ({"target": "127.0.0.1:1", "tls": {"ca": "/ca.pem"}}, "storage.descriptorservice.tls.enabled"),
        (
            {"target": "127.0.0.1:1", "tls": {"enabled": True, "ca": "/nonexistent.pem"}},
            "storage.descriptorservice.tls",
        ),
        ({"target": "127.0.0.1:1", "timeout": 0}, "storage.descriptorservice.timeout"),
    ],
)
def test_bad_config_is_refused_naming_the_key(tmp_path: Path, section: dict[str, Any], key: str) -> None:
    proc = ServerProcess(server_config({"descriptorservice": section}), tmp_path)
    with pytest.raises(RuntimeError) as info:
        proc.start(timeout=60)
    assert proc.proc is not None
    assert proc.proc.wait(10) == 2
    assert f"{key}:" in str(info.value)
