"""The registry plug-in heals what it sees, and garbage collection leaves nothing stale.

Real parts: distribution v3.1.1's registry with the ``descriptorcache`` middleware
(``registry-descriptor``, built from registry-go/) and a descriptor-server (in-memory
cache, deletion on) whose filesystem backend is the registry's own storage root, as
docs/registry-go.md recommends. Blobs are removed behind the registry's back the way
distribution's garbage collector removes them (the blob's directory under
``blobs/``), and images are pushed over the OCI distribution API.

The controls: a blob removed behind the registry's back is still advertised by HEAD
(the service answers it, storage is not asked) until a read heals it; distribution's
own ``registry garbage-collect`` (no revalidation) leaves the service answering the
collected blob.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from descriptor_client import BlobUnknownError, DescriptorClient
from helpers.backend_support import REGISTRY_31, REGISTRY_DESCRIPTOR, RegistryProcess, push_blob
from helpers.support import Layout, ServerProcess, base_config

_repos = itertools.count()
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def new_repo(prefix: str = "heal") -> str:
    return f"{prefix}/app-{next(_repos)}"


def middleware(target: str, token: str | None = None) -> dict[str, Any]:
    options = {"target": target, "timeout": "5s"}
    if token is not None:
        options["token"] = token
    return {"middleware": {"repository": [{"name": "descriptorcache", "options": options}]}}


@pytest.fixture(scope="module")
def binary() -> str:
    if not REGISTRY_DESCRIPTOR.available():
        pytest.skip(f"{REGISTRY_DESCRIPTOR.binary} is not built (./dev test builds it from registry-go/)")
    return REGISTRY_DESCRIPTOR.binary


class Shared:
    """A descriptor-server and registry-descriptor over one storage root."""

    def __init__(self, workdir: Path, token: str | None = None) -> None:
        """``token``: the service accepts only it (a static ``write`` token), and the
        middleware sends it."""
        self.workdir = workdir
        self.token = token
        self.root = workdir / "storage"
        self.root.mkdir(parents=True, exist_ok=True)
        self.layout = Layout(self.root)
        (workdir / "service").mkdir(exist_ok=True)
        config = base_config(self.root)
        if token is not None:
            sha = hashlib.sha256(token.encode()).hexdigest()
            config["auth"] = {"tokens": [{"name": "registry", "scope": "write", "sha256": sha}]}
        self.service = ServerProcess(config, workdir / "service").start()
        self.registry: RegistryProcess | None = None
        self.starts = 0
        self.start_registry()

    def start_registry(self) -> RegistryProcess:
        self.starts += 1
        self.registry = RegistryProcess(
            self.workdir / f"registry-{self.starts}",
            release=REGISTRY_DESCRIPTOR,
            storage=self.root,
            extra=middleware(self.service.target, self.token),
        )
        return self.registry

    def stop_registry(self) -> Path:
        assert self.registry is not None
        self.registry.stop()
        return self.registry.config_path

    @property
    def url(self) -> str:
        assert self.registry is not None
        return self.registry.url

    def stop(self) -> None:
        if self.registry is not None:
            self.registry.stop()
        self.service.stop()


@pytest.fixture
def shared(binary: str, tmp_path: Path) -> Iterator[Shared]:
    s = Shared(tmp_path)
    try:
        yield s
    finally:
        s.stop()


def remove_behind_the_back(layout: Layout, digest: str) -> None:
    """What distribution's garbage collector does to a blob: its directory goes."""
    shutil.rmtree(layout.blob_data(digest).parent)


def errors_of(resp: httpx.Response) -> list[str]:
    return [e["code"] for e in resp.json()["errors"]]


def image(seed: str) -> tuple[bytes, bytes]:
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode()
    layer = hashlib.sha256(seed.encode()).digest() * 64
    return config, layer


def manifest_of(config: bytes, layer: bytes) -> bytes:
    def desc(media: str, content: bytes) -> dict[str, Any]:
        return {"mediaType": media, "digest": "sha256:" + hashlib.sha256(content).hexdigest(), "size": len(content)}

    body = {"schemaVersion": 2, "mediaType": MANIFEST, "config": desc(CONFIG, config), "layers": [desc(LAYER, layer)]}
    return json.dumps(body).encode()


def push_image(url: str, repo: str, tag: str, config: bytes, layer: bytes) -> httpx.Response:
    """Push as a client does: HEAD each blob, upload the ones the registry lacks, PUT the manifest."""
    with httpx.Client(timeout=10) as http:
        for content in (config, layer):
            digest = "sha256:" + hashlib.sha256(content).hexdigest()
            if http.head(f"{url}/v2/{repo}/blobs/{digest}").status_code != 200:
                push_blob(url, repo, content)
        return http.put(
            f"{url}/v2/{repo}/manifests/{tag}", content=manifest_of(config, layer), headers={"Content-Type": MANIFEST}
        )


def sha(content: bytes) -> str:
    return "sha256:" + hashlib.sha256(content).hexdigest()


def descriptorctl(target: str, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DESCRIPTOR_")}
    if token is not None:
        env["DESCRIPTOR_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "descriptor_client.cli", "--target", target, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


# -- heal -----------------------------------------------------------------------------


def test_a_get_of_a_blob_storage_lost_is_404_and_heals_the_service(shared: Shared) -> None:
    repo, content = new_repo(), b"a layer collected behind the registry's back" * 4
    digest = push_blob(shared.url, repo, content)
    url = f"{shared.url}/v2/{repo}/blobs/{digest}"
    remove_behind_the_back(shared.layout, digest)
    with httpx.Client(timeout=10) as http, DescriptorClient(shared.service.target) as client:
        # The control: the service still claims it, and HEAD does not touch storage.
        assert http.head(url).status_code == 200
        resp = http.get(url)
        assert resp.status_code == 404, resp.text  # distribution alone: 404; unhealed: 500
        assert errors_of(resp) == ["BLOB_UNKNOWN"]
        assert http.head(url).status_code == 404  # the service's entry went with it
        with pytest.raises(BlobUnknownError):
            client.stat(digest, repo)
        with pytest.raises(BlobUnknownError):
            client.stat(digest)
    # The same content pushed again works and is answered again.
    assert push_blob(shared.url, repo, content) == digest
    with httpx.Client(timeout=10) as http:
        assert http.head(url).status_code == 200
        assert http.get(url).content == content
    assert shared.registry is not None
    assert "storage lacks the blob the descriptor service claimed" in shared.registry.output


def test_a_manifest_put_over_a_lost_blob_is_manifest_blob_unknown_and_a_re_push_works(shared: Shared) -> None:
    repo = new_repo()
    config, layer = image("manifest verification")
    assert push_image(shared.url, repo, "1", config, layer).status_code == 201
    # The manifest goes, the layer's data goes behind the registry's back.
    remove_behind_the_back(shared.layout, sha(layer))
    with httpx.Client(timeout=10) as http:
        layer_url = f"{shared.url}/v2/{repo}/blobs/{sha(layer)}"
        assert http.head(layer_url).status_code == 200  # stale: the service still claims it
        # A client trusting that HEAD skips the upload; the manifest is refused as the
        # registry alone refuses it.
        body, headers = manifest_of(config, layer), {"Content-Type": MANIFEST}
        resp = http.put(f"{shared.url}/v2/{repo}/manifests/2", content=body, headers=headers)
        assert resp.status_code == 400, resp.text
        assert errors_of(resp) == ["MANIFEST_BLOB_UNKNOWN"]
        assert http.head(layer_url).status_code == 404  # healed
    # The client's retry now uploads the layer, and the manifest is accepted.
    assert push_image(shared.url, repo, "2", config, layer).status_code == 201
    assert httpx.get(f"{shared.url}/v2/{repo}/blobs/{sha(layer)}", timeout=10).content == layer


def test_a_mount_from_a_repository_that_lost_the_blob_uploads_and_heals_the_source(shared: Shared) -> None:
    source, target, content = new_repo(), new_repo(), b"mounted from a repository that lost it"
    digest = push_blob(shared.url, source, content)
    remove_behind_the_back(shared.layout, digest)
    with httpx.Client(timeout=10) as http, DescriptorClient(shared.service.target) as client:
        assert client.stat(digest, source).digest == digest  # the service claims it
        resp = http.post(f"{shared.url}/v2/{target}/blobs/uploads/", params={"mount": digest, "from": source})
        assert resp.status_code == 202, resp.text  # an upload session, as the registry alone
        with pytest.raises(BlobUnknownError):
            client.stat(digest, source)
        assert http.head(f"{shared.url}/v2/{source}/blobs/{digest}").status_code == 404
    assert push_blob(shared.url, target, content) == digest


# -- garbage collection -----------------------------------------------------------------


def push_then_untag(shared: Shared) -> tuple[str, bytes, str]:
    """Push gc-<n>:1 and delete its manifest, which leaves its blobs to the collector:
    the repository, the layer, the manifest's digest."""
    repo = new_repo("gc")
    config, layer = image(repo)
    resp = push_image(shared.url, repo, "1", config, layer)
    assert resp.status_code == 201, resp.text
    manifest = resp.headers["Docker-Content-Digest"]
    assert httpx.delete(f"{shared.url}/v2/{repo}/manifests/{manifest}", timeout=10).status_code == 202
    return repo, layer, manifest


def garbage_collect(binary: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``<binary> garbage-collect <args>``, its output captured."""
    return subprocess.run(
        [binary, "garbage-collect", *args], capture_output=True, text=True, timeout=120, check=False, env=env
    )


def collect_then_check(shared: Shared, binary: str) -> tuple[str, str, str, subprocess.CompletedProcess[str]]:
    """Push gc-<n>:1, delete its manifest, stop the registry, collect with ``binary``, start it again."""
    repo, layer, manifest = push_then_untag(shared)
    layer_url = f"{shared.url}/v2/{repo}/blobs/{sha(layer)}"
    assert httpx.head(layer_url, timeout=10).status_code == 200
    config_path = shared.stop_registry()
    done = garbage_collect(
        binary, str(config_path), env={k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    )
    assert not shared.layout.blob_data(sha(layer)).exists(), done.stdout + done.stderr  # collected
    shared.start_registry()
    return repo, sha(layer), manifest, done


def test_garbage_collect_revalidates_what_it_removed(shared: Shared) -> None:
    repo, layer, _, done = collect_then_check(shared, REGISTRY_DESCRIPTOR.binary)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "descriptor service: 3 blobs and 2 links removed from storage; 5 entries revalidated and removed" in (
        done.stdout
    ), done.stdout
    url = f"{shared.url}/v2/{repo}/blobs/{layer}"
    with httpx.Client(timeout=10) as http:
        assert http.head(url).status_code == 404
        assert http.get(url).status_code == 404
    stat = descriptorctl(shared.service.target, "stat", layer, "--repository", repo)
    assert stat.returncode == 1, stat.stdout + stat.stderr  # not found
    assert descriptorctl(shared.service.target, "stat", layer).returncode == 1
    config, layer_bytes = image(repo)
    assert push_image(shared.url, repo, "1", config, layer_bytes).status_code == 201  # pushing again works
    assert httpx.get(url, timeout=10).content == layer_bytes


def test_plain_garbage_collect_leaves_the_service_stale(shared: Shared) -> None:
    """The control: distribution's own command, same configuration, no revalidation."""
    if not REGISTRY_31.available():
        pytest.skip(f"{REGISTRY_31.binary} is not built (./dev tools)")
    repo, layer, _, done = collect_then_check(shared, REGISTRY_31.binary)
    assert done.returncode == 0, done.stdout + done.stderr
    url = f"{shared.url}/v2/{repo}/blobs/{layer}"
    assert httpx.head(url, timeout=10).status_code == 200  # stale: the collected layer is advertised
    assert descriptorctl(shared.service.target, "stat", layer, "--repository", repo).returncode == 0


def test_garbage_collect_refuses_to_collect_when_the_service_is_down(shared: Shared) -> None:
    _, layer, _ = push_then_untag(shared)
    config_path = shared.stop_registry()
    shared.service.stop()
    done = garbage_collect(REGISTRY_DESCRIPTOR.binary, str(config_path))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "the descriptor service is not serving, nothing was collected" in done.stderr
    assert shared.layout.blob_data(sha(layer)).exists()  # nothing removed


def test_garbage_collect_dry_run_removes_and_revalidates_nothing(shared: Shared) -> None:
    repo, layer, _ = push_then_untag(shared)
    config_path = shared.stop_registry()
    done = garbage_collect(REGISTRY_DESCRIPTOR.binary, "--dry-run", str(config_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"blob eligible for deletion: {sha(layer)}" in done.stdout
    assert shared.layout.blob_data(sha(layer)).exists()
    with DescriptorClient(shared.service.target) as client:
        assert client.stat(sha(layer), repo).digest == sha(layer)


def test_garbage_collect_with_delete_untagged_revalidates_the_untagged_manifest_and_its_layer(shared: Shared) -> None:
    repo = new_repo("gc")
    old_config, old_layer = image(repo + " first")
    first = push_image(shared.url, repo, "1", old_config, old_layer)
    assert first.status_code == 201
    config, layer = image(repo + " second")
    assert push_image(shared.url, repo, "1", config, layer).status_code == 201  # tag 1 moves on
    with httpx.Client(timeout=10) as http:
        assert http.head(f"{shared.url}/v2/{repo}/blobs/{sha(old_layer)}").status_code == 200
    config_path = shared.stop_registry()
    done = garbage_collect(REGISTRY_DESCRIPTOR.binary, "--delete-untagged", str(config_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert not shared.layout.blob_data(sha(old_layer)).exists()
    shared.start_registry()
    with httpx.Client(timeout=10) as http:
        assert http.head(f"{shared.url}/v2/{repo}/blobs/{sha(old_layer)}").status_code == 404
        assert http.head(f"{shared.url}/v2/{repo}/blobs/{first.headers['Docker-Content-Digest']}").status_code == 404
        assert http.head(f"{shared.url}/v2/{repo}/blobs/{sha(layer)}").status_code == 200  # still tagged
        assert http.get(f"{shared.url}/v2/{repo}/manifests/1", headers={"Accept": MANIFEST}).status_code == 200


def test_garbage_collect_that_cannot_tell_the_service_exits_1_and_says_what_to_do(binary: str, tmp_path: Path) -> None:
    token = "registry-middleware-token"
    shared = Shared(tmp_path, token=token)
    try:
        repo, layer, _ = push_then_untag(shared)
        config_path = shared.stop_registry()
        # The collection runs with a token the service refuses (its health check is open).
        wrong = config_path.with_name("registry-wrong-token.yml")
        wrong.write_text(config_path.read_text().replace(token, "a-revoked-token"))
        done = garbage_collect(REGISTRY_DESCRIPTOR.binary, "--quiet", str(wrong))
        assert done.returncode == 1, done.stdout + done.stderr
        assert "5 failed" in done.stdout
        assert "5 of 5 revalidations failed" in done.stderr
        commands = [
            line.split("#")[0].split() for line in done.stdout.splitlines() if "descriptorctl revalidate" in line
        ]
        assert ["descriptorctl", "revalidate", sha(layer), "--repository", repo] in commands
        assert len(commands) == 5
        shared.start_registry()
        layer_url = f"{shared.url}/v2/{repo}/blobs/{sha(layer)}"
        assert httpx.head(layer_url, timeout=10).status_code == 200  # the service was not told: stale
        # Doing what the message says finishes the job.
        for command in commands:
            done = descriptorctl(shared.service.target, *command[1:], token=token)
            assert done.returncode == 1, done.stdout + done.stderr  # BLOB_UNKNOWN: removed
        assert httpx.head(layer_url, timeout=10).status_code == 404
    finally:
        shared.stop()


def test_a_get_by_another_algorithm_heals_both_digests(shared: Shared) -> None:
    repo, content = new_repo(), b"pushed under its sha512 digest"
    alias = "sha512:" + hashlib.sha512(content).hexdigest()
    with httpx.Client(timeout=10) as http:
        resp = http.post(f"{shared.url}/v2/{repo}/blobs/uploads/")
        location = resp.headers["Location"]
        location = shared.url + location if location.startswith("/") else location
        resp = http.put(httpx.URL(location).copy_merge_params({"digest": alias}), content=content)
        assert resp.status_code == 201, resp.text
        canonical = sha(content)
        remove_behind_the_back(shared.layout, canonical)
        alias_url, canonical_url = (f"{shared.url}/v2/{repo}/blobs/{d}" for d in (alias, canonical))
        assert http.head(alias_url).status_code == 200  # stale, from the service
        resp = http.get(alias_url)
        assert resp.status_code == 404, resp.text
        assert resp.json()["errors"][0]["detail"] == alias
        assert http.head(alias_url).status_code == 404
        assert http.head(canonical_url).status_code == 404
