"""A distribution registry and this service sharing one Redis and one storage root.

Every test runs against each distribution release (``registry_release``: Debian's 2.8
and v3.1.1 built from the Go module proxy by ./dev). The registry keeps its own
``redis`` blob descriptor cache; our server uses the ``redis`` cache on the same Redis
and the ``filesystem`` backend over the registry's own storage root. Blobs are pushed
and deleted through the registry's HTTP API (OCI distribution spec), and each side
must see what the other wrote:

- a push through the registry is a cache hit in our service;
- a repository media type our service cached is what the registry answers;
- a repository Clear through our service removes the membership, the repository hash
  and the global entry, and the registry answers 404;
- a DELETE through the registry leaves our service answering BLOB_UNKNOWN. The keys
  left differ by release and are checked key by key: v3.1's repository Clear removes
  the same three keys in one MULTI/EXEC (our Clear then answers BLOB_UNKNOWN); 2.8's
  removes only the global hash (our Clear then answers OK and removes the rest).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from descriptor_client import BlobUnknownError, Descriptor, DescriptorClient
from helpers.backend_support import REGISTRY_31, RegistryProcess, RegistryRelease, push_blob
from helpers.redis_servers import RedisProcess, flush
from helpers.support import OCT, ServerProcess, digest_of, running_server
from helpers.targets_backends import server_config

_repos = itertools.count()


def new_repo() -> str:
    return f"interop/app-{next(_repos)}"


def blob_url(registry: RegistryProcess, repo: str, digest: str) -> str:
    return f"{registry.url}/v2/{repo}/blobs/{digest}"


def redis_keys(raw: Any, repo: str, digest: str) -> dict[str, bool]:
    return {
        "membership": bool(raw.sismember(f"repository::{repo}::blobs", digest)),
        "repository hash": bool(raw.exists(f"repository::{repo}::blobs::{digest}")),
        "global hash": bool(raw.exists(f"blobs::{digest}")),
    }


@pytest.fixture(scope="module")
def shared(
    tmp_path_factory: pytest.TempPathFactory, registry_release: RegistryRelease, redis_standalone: RedisProcess
) -> Iterator[tuple[RegistryProcess, ServerProcess]]:
    """The registry (redis cache) and our server (redis cache, filesystem backend over
    the registry's root) on one Redis."""
    flush(redis_standalone)
    workdir = tmp_path_factory.mktemp(f"interop-{registry_release.name}")
    registry = RegistryProcess(
        workdir / "registry", release=registry_release, cache="redis", redis=redis_standalone.addr
    )
    registry.root.mkdir(parents=True, exist_ok=True)
    config = server_config({"filesystem": {"rootdirectory": str(registry.root)}}, cache="redis")
    config["redis"] = {"addrs": [redis_standalone.addr]}
    try:
        server = ServerProcess(config, workdir).start()
    except BaseException:
        registry.stop()
        raise
    try:
        yield registry, server
    finally:
        server.stop()
        registry.stop()


@pytest.fixture
def raw(redis_standalone: RedisProcess) -> Iterator[Any]:
    client = redis_standalone.client()
    try:
        yield client
    finally:
        client.close()


def test_a_push_through_the_registry_is_a_hit_in_the_service(
    shared: tuple[RegistryProcess, ServerProcess], raw: Any
) -> None:
    registry, server = shared
    repo, content = new_repo(), b"pushed through the registry"
    digest = push_blob(registry.url, repo, content)
    # The registry's upload commit wrote its cache; a HEAD reads it back.
    assert httpx.head(blob_url(registry, repo, digest)).status_code == 200
    assert redis_keys(raw, repo, digest)["global hash"]
    assert raw.sismember(f"repository::{repo}::blobs", digest)
    with DescriptorClient(server.target) as client:
        before = client.metrics()
        assert client.stat(digest, repo) == Descriptor(OCT, digest, len(content))
        assert client.stat(digest) == Descriptor(OCT, digest, len(content))
        after = client.metrics()
    assert (after.hits - before.hits, after.misses - before.misses) == (2, 0)


def test_the_registry_answers_what_the_service_cached(shared: tuple[RegistryProcess, ServerProcess], raw: Any) -> None:
    registry, server = shared
    repo, content = new_repo(), b"media type set through the service"
    digest = push_blob(registry.url, repo, content)
    media_type = "application/vnd.oci.image.layer.v1.tar+gzip"
    with DescriptorClient(server.target) as client:
        client.set_descriptor(digest, Descriptor(media_type, digest, len(content)), repo)
    assert raw.hget(f"repository::{repo}::blobs::{digest}", "mediatype") == media_type
    head = httpx.head(blob_url(registry, repo, digest))
    assert head.status_code == 200
    assert head.headers["Content-Type"] == media_type
    assert head.headers["Docker-Content-Digest"] == digest
    assert int(head.headers["Content-Length"]) == len(content)


def test_a_clear_through_the_service_is_gone_from_the_registry(
    shared: tuple[RegistryProcess, ServerProcess], raw: Any
) -> None:
    registry, server = shared
    repo, other, content = new_repo(), new_repo(), b"cleared through the service"
    digest = push_blob(registry.url, repo, content)
    push_blob(registry.url, other, content)
    assert httpx.head(blob_url(registry, repo, digest)).status_code == 200
    with DescriptorClient(server.target) as client:
        client.clear(digest, repo)
        assert redis_keys(raw, repo, digest) == {"membership": False, "repository hash": False, "global hash": False}
        assert httpx.head(blob_url(registry, repo, digest)).status_code == 404
        with pytest.raises(BlobUnknownError):
            client.stat(digest, repo)
        # The other repository still holds it, read again from storage by both sides.
        assert httpx.head(blob_url(registry, other, digest)).status_code == 200
        assert client.stat(digest, other) == Descriptor(OCT, digest, len(content))


def test_a_delete_through_the_registry_is_unknown_to_the_service(
    shared: tuple[RegistryProcess, ServerProcess], raw: Any, registry_release: RegistryRelease
) -> None:
    registry, server = shared
    repo, content = new_repo(), b"deleted through the registry"
    digest = push_blob(registry.url, repo, content)
    with DescriptorClient(server.target) as client:
        assert client.stat(digest, repo).digest == digest  # cached in the shared Redis
        assert httpx.delete(blob_url(registry, repo, digest)).status_code == 202
        left = redis_keys(raw, repo, digest)
        with pytest.raises(BlobUnknownError):
            client.stat(digest, repo)
        if registry_release == REGISTRY_31:
            # v3.1's repository Clear removes the membership, the repository hash and
            # the global entry in one MULTI/EXEC: nothing is left to clear.
            assert left == {"membership": False, "repository hash": False, "global hash": False}
            with pytest.raises(BlobUnknownError):
                client.clear(digest, repo)
        else:
            # 2.8 deletes only the global hash; the membership it leaves still lists the
            # digest, so our Clear answers OK and removes the rest.
            assert left == {"membership": True, "repository hash": True, "global hash": False}
            client.clear(digest, repo)
            assert not any(redis_keys(raw, repo, digest).values())
    assert httpx.head(blob_url(registry, repo, digest)).status_code == 404


def test_storage_shared_without_a_common_cache(tmp_path: Path, registry_release: RegistryRelease) -> None:
    # The registry with no cache of its own and our server with its in-memory cache,
    # over one storage root: what each writes to storage the other reads.
    registry = RegistryProcess(tmp_path / "registry", release=registry_release)
    try:
        registry.root.mkdir(parents=True, exist_ok=True)
        config = server_config({"filesystem": {"rootdirectory": str(registry.root)}})
        with running_server(config, tmp_path) as server, DescriptorClient(server.target) as client:
            repo, content = new_repo(), b"on the shared storage"
            digest = push_blob(registry.url, repo, content)
            assert client.stat(digest, repo) == Descriptor(OCT, digest, len(content))
            client.clear(digest, repo)  # deletes the repository's link
            assert httpx.head(blob_url(registry, repo, digest)).status_code == 404
            gone = push_blob(registry.url, new_repo(), b"deleted before the service saw it")
            repo2 = new_repo()
            push_blob(registry.url, repo2, b"deleted before the service saw it")
            assert httpx.delete(blob_url(registry, repo2, gone)).status_code == 202
            with pytest.raises(BlobUnknownError):
                client.stat(gone, repo2)
            assert client.stat(digest_of(b"on the shared storage")).size == len(content)  # soft delete: data stays
    finally:
        registry.stop()
