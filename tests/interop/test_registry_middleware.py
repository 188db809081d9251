"""distribution v3.1.1's registry with this service as its blob descriptor cache.

``registry-descriptor`` (registry-go/cmd/registry-descriptor, built by ./dev) is
distribution's registry with the ``descriptorcache`` repository middleware compiled
in and no ``storage.cache`` of its own. The descriptor-server behind it is started by
the test with the in-memory cache and a filesystem backend over an empty root of its
own, so everything the service knows about the registry's blobs came through the
plug-in. Blobs are pushed, read and deleted over HTTP as the OCI distribution spec
says (POST then PUT ?digest= monolithic upload, cross-repository mount, HEAD, GET,
DELETE).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from descriptor_client import BlobUnknownError, Descriptor, DescriptorClient
from helpers.backend_support import REGISTRY_DESCRIPTOR, RegistryProcess, push_blob
from helpers.registry_scenarios import middleware
from helpers.support import OCT, ServerProcess, base_config, free_port

_repos = itertools.count()


def new_repo() -> str:
    return f"plugged/app-{next(_repos)}"


@pytest.fixture(scope="module")
def binary() -> str:
    if not REGISTRY_DESCRIPTOR.available():
        pytest.skip(f"{REGISTRY_DESCRIPTOR.binary} is not built (./dev test builds it from registry-go/)")
    return REGISTRY_DESCRIPTOR.binary


def start_service(workdir: Path, *, delete: bool = True) -> ServerProcess:
    root = workdir / "service-root"
    root.mkdir(parents=True, exist_ok=True)
    return ServerProcess(base_config(root, delete=delete), workdir).start()


@pytest.fixture(scope="module")
def plugged(binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RegistryProcess, ServerProcess]]:
    workdir = tmp_path_factory.mktemp("plugged")
    service = start_service(workdir)
    try:
        registry = RegistryProcess(
            workdir / "registry", release=REGISTRY_DESCRIPTOR, extra=middleware(service.target, timeout="5s")
        )
    except BaseException:
        service.stop()
        raise
    try:
        yield registry, service
    finally:
        registry.stop()
        service.stop()


def blob_url(registry: RegistryProcess, repo: str, digest: str) -> str:
    return f"{registry.url}/v2/{repo}/blobs/{digest}"


def test_a_push_primes_the_service(plugged: tuple[RegistryProcess, ServerProcess]) -> None:
    registry, service = plugged
    repo, content = new_repo(), b"pushed through the plugged registry"
    with DescriptorClient(service.target) as client:
        before = client.metrics()
        digest = push_blob(registry.url, repo, content)
        # The service's own backend is an empty root: only the push can have told it.
        assert client.stat(digest, repo) == Descriptor(OCT, digest, len(content))
        assert client.stat(digest) == Descriptor(OCT, digest, len(content))
        after = client.metrics()
        with pytest.raises(BlobUnknownError):
            client.stat(digest, new_repo())
    # The upload's own existence checks may ask the service; every answer was a hit.
    assert after.misses == before.misses


def test_head_and_get_are_answered_through_the_service(plugged: tuple[RegistryProcess, ServerProcess]) -> None:
    registry, service = plugged
    repo, content = new_repo(), b"read through the service" * 10
    digest = push_blob(registry.url, repo, content)
    url = blob_url(registry, repo, digest)
    with DescriptorClient(service.target) as client, httpx.Client(timeout=10) as http:
        before = client.metrics()
        heads = 7
        for _ in range(heads):
            resp = http.head(url)
            assert resp.status_code == 200
            assert resp.headers["Content-Length"] == str(len(content))
            assert resp.headers["Docker-Content-Digest"] == digest
            assert resp.headers["Content-Type"] == OCT
            assert resp.headers["ETag"] == f'"{digest}"'
        after = client.metrics()
        # One service Stat per HEAD, each a hit.
        assert (after.requests - before.requests, after.hits - before.hits) == (heads, heads)
        assert after.misses == before.misses
        resp = http.get(url)
        assert resp.status_code == 200
        assert resp.content == content
        assert resp.headers["Docker-Content-Digest"] == digest
        assert client.metrics().hits > after.hits
        # What the service says is what the registry answers: a repository media type
        # set in the service becomes the HEAD's Content-Type.
        client.set_descriptor(digest, Descriptor("application/vnd.test+json", digest, len(content)), repo)
        assert http.head(url).headers["Content-Type"] == "application/vnd.test+json"
        # Conditional HEAD.
        assert http.head(url, headers={"If-None-Match": f'"{digest}"'}).status_code == 304
        # Unknown blobs: the service misses, storage does not have it either.
        missing = "sha256:" + hashlib.sha256(b"never pushed").hexdigest()
        assert http.head(blob_url(registry, repo, missing)).status_code == 404
        assert http.get(blob_url(registry, repo, missing)).status_code == 404


def test_a_miss_is_answered_from_storage_and_a_priming_of_a_cleared_digest_is_checked(
    plugged: tuple[RegistryProcess, ServerProcess],
) -> None:
    registry, service = plugged
    repo, content = new_repo(), b"forgotten by the service"
    digest = push_blob(registry.url, repo, content)
    url = blob_url(registry, repo, digest)
    with DescriptorClient(service.target) as client:
        # The service forgets it (a repository Clear removes the global entry too); the
        # registry's storage keeps it.
        client.clear(digest, repo)
        with pytest.raises(BlobUnknownError):
            client.stat(digest, repo)
        before = client.metrics()
        assert httpx.head(url).status_code == 200  # a miss, then storage
        middle = client.metrics()
        assert middle.misses - before.misses == 1
        # The registry primes the service, but the digest was cleared moments ago (it is
        # fenced), so the service checks the priming against its own backend: that one no
        # longer holds the blob (the Clear deleted it there), and the write is dropped.
        with pytest.raises(BlobUnknownError):
            client.stat(digest, repo)
        assert httpx.head(url).status_code == 200  # the registry answers from its storage


def test_a_delete_clears_the_service(plugged: tuple[RegistryProcess, ServerProcess]) -> None:
    registry, service = plugged
    repo, other, content = new_repo(), new_repo(), b"deleted through the plugged registry"
    digest = push_blob(registry.url, repo, content)
    push_blob(registry.url, other, content)
    with DescriptorClient(service.target) as client:
        assert client.stat(digest, repo).digest == digest
        resp = httpx.delete(blob_url(registry, repo, digest))
        assert resp.status_code == 202, resp.text
        with pytest.raises(BlobUnknownError):
            client.stat(digest, repo)
        assert httpx.head(blob_url(registry, repo, digest)).status_code == 404
        assert httpx.delete(blob_url(registry, repo, digest)).status_code == 404
        # The other repository still holds it (read again from storage). The registry's
        # priming of it is checked against the service's backend while the digest is
        # fenced; this fixture's service has a backend of its own (not the registry's
        # storage), which never held it: the write is dropped, and a HEAD stays right.
        assert httpx.head(blob_url(registry, other, digest)).status_code == 200


def test_a_cross_repository_mount_primes_the_service(plugged: tuple[RegistryProcess, ServerProcess]) -> None:
    registry, service = plugged
    source, target, content = new_repo(), new_repo(), b"mounted across repositories"
    digest = push_blob(registry.url, source, content)
    resp = httpx.post(f"{registry.url}/v2/{target}/blobs/uploads/", params={"mount": digest, "from": source})
    assert resp.status_code == 201, resp.text
    with DescriptorClient(service.target) as client:
        assert client.stat(digest, target) == Descriptor(OCT, digest, len(content))


def test_service_down_heads_from_storage_and_deletes_refused(binary: str, tmp_path: Path) -> None:
    service = start_service(tmp_path)
    registry = RegistryProcess(tmp_path / "registry", release=REGISTRY_DESCRIPTOR, extra=middleware(service.target))
    try:
        repo, content = new_repo(), b"while the service is down"
        digest = push_blob(registry.url, repo, content)
        service.stop()
        # Stat falls back to storage, as distribution's cached statter does on a cache error.
        resp = httpx.head(blob_url(registry, repo, digest), timeout=30)
        assert resp.status_code == 200
        assert resp.headers["Content-Length"] == str(len(content))
        # A delete the service cannot clear changes nothing (no stale cache entry later).
        assert httpx.delete(blob_url(registry, repo, digest), timeout=30).status_code >= 500
        assert httpx.head(blob_url(registry, repo, digest), timeout=30).status_code == 200
        assert "descriptor service" in registry.output
        # A push still succeeds (priming is best effort).
        push_blob(registry.url, repo, b"pushed while the service is down")
    finally:
        registry.stop()
        service.stop()


def test_deletion_disabled_in_the_service_is_unsupported(binary: str, tmp_path: Path) -> None:
    service = start_service(tmp_path, delete=False)
    registry = RegistryProcess(tmp_path / "registry", release=REGISTRY_DESCRIPTOR, extra=middleware(service.target))
    try:
        repo = new_repo()
        digest = push_blob(registry.url, repo, b"kept")
        resp = httpx.delete(blob_url(registry, repo, digest))
        assert resp.status_code == 405
        assert resp.json()["errors"][0]["code"] == "UNSUPPORTED"
        assert httpx.head(blob_url(registry, repo, digest)).status_code == 200
    finally:
        registry.stop()
        service.stop()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"target": ""}, "options.target: required"),
        ({"colour": "blue"}, "options.colour: unknown option"),
        ({"timout": "2s"}, "options.timout: unknown option (did you mean timeout?)"),
        ({"timeout": "soon"}, "options.timeout"),
        ({"maxbatch": 0}, "options.maxbatch"),
        ({"tls": {"ca": "/nonexistent/ca.pem"}}, "TLS CA"),
    ],
    ids=["no-target", "unknown-key", "typo", "bad-timeout", "bad-maxbatch", "missing-ca"],
)
def test_bad_middleware_options_stop_the_registry_at_start(
    binary: str, tmp_path: Path, options: dict[str, Any], message: str
) -> None:
    """A bad option is a configuration error at start (exit 1, as distribution's own),
    not a registry that answers /v2/ and then 500 on every repository request."""
    config = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(tmp_path / "storage")}},
        "http": {"addr": f"127.0.0.1:{free_port()}", "secret": "test-secret"},
        "middleware": {"repository": [{"name": "descriptorcache", "options": {"target": "x:1", **options}}]},
    }
    path = tmp_path / "registry.yml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    done = subprocess.run(
        [binary, "serve", str(path)], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert done.returncode == 1, done.stdout + done.stderr
    first = done.stderr.splitlines()[0]
    assert first.startswith("configuration error: middleware.repository[0] (descriptorcache): "), done.stderr
    assert message in first


def test_good_middleware_options_pass_the_start_check(binary: str, tmp_path: Path) -> None:
    """The check makes no connection: a service that is down does not stop the registry."""
    registry = RegistryProcess(tmp_path / "registry", release=REGISTRY_DESCRIPTOR, extra=middleware("127.0.0.1:1"))
    try:
        assert httpx.get(registry.url + "/v2/").status_code == 200
    finally:
        registry.stop()
