"""Fixtures for the backends with real peers: S3 (moto's server), another descriptor
service (two of our servers chained), and distribution's registry (2.8 and v3.1.1).

Conformance targets (listed in ``targets.TARGETS``):
- ``target_server_s3``: our server with ``storage.s3`` over an empty bucket.
- ``target_server_chained``: a front server with ``storage.descriptorservice`` in front
  of a back server (filesystem backend, empty root).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from descriptor_client import AsyncDescriptorClient
from descriptor_client.protocol import BlobDescriptorService

from helpers.backend_support import (
    REGISTRY_RELEASES,
    S3_ENV,
    MotoServer,
    RegistryProcess,
    RegistryRelease,
    s3_storage,
)
from helpers.support import ServerProcess, base_config

_buckets = itertools.count()


def server_config(storage: dict[str, Any], *, delete: bool = True, cache: str = "inmemory") -> dict[str, Any]:
    """A server config with the given ``storage.<backend>`` section(s)."""
    return {
        "storage": {**storage, "cache": {"blobdescriptor": cache}, "delete": {"enabled": delete}},
        "grpc": {"addr": "127.0.0.1:0"},
        "log": {"level": "info"},
    }


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(moto_server: MotoServer) -> tuple[Any, str]:
    """A boto3 client and a fresh, empty bucket on the moto server."""
    client = moto_server.client()
    name = f"registry-{next(_buckets)}"
    client.create_bucket(Bucket=name)
    return client, name


@pytest.fixture
async def target_server_s3(
    tmp_path: Path, moto_server: MotoServer, s3_bucket: tuple[Any, str]
) -> AsyncIterator[BlobDescriptorService]:
    _, bucket = s3_bucket
    config = server_config({"s3": s3_storage(moto_server.endpoint, bucket, "/registry")})
    proc = ServerProcess(config, tmp_path, env=S3_ENV).start()
    try:
        async with AsyncDescriptorClient(proc.target) as client:
            yield client
    finally:
        proc.stop()


@pytest.fixture
def back_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A back server: filesystem backend over ``tmp_path/back-registry``, deletion on."""
    root = tmp_path / "back-registry"
    root.mkdir()
    workdir = tmp_path / "back"
    workdir.mkdir()
    proc = ServerProcess(base_config(root), workdir).start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
async def target_server_chained(tmp_path: Path, back_server: ServerProcess) -> AsyncIterator[BlobDescriptorService]:
    config = server_config({"descriptorservice": {"target": back_server.target, "timeout": "5s"}})
    proc = ServerProcess(config, tmp_path).start()
    try:
        async with AsyncDescriptorClient(proc.target) as client:
            yield client
    finally:
        proc.stop()


@pytest.fixture(scope="module", params=REGISTRY_RELEASES, ids=[r.name for r in REGISTRY_RELEASES])
def registry_release(request: pytest.FixtureRequest) -> RegistryRelease:
    """Each distribution release the registry tests run against: Debian's 2.8 and
    v3.1.1 built from the Go module proxy (./dev)."""
    release: RegistryRelease = request.param
    if not release.available():
        pytest.skip(release.missing())
    return release


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, registry_release: RegistryRelease) -> Iterator[RegistryProcess]:
    """distribution's registry (each release), deletion enabled, no auth."""
    proc = RegistryProcess(tmp_path_factory.mktemp("registry"), release=registry_release)
    try:
        yield proc
    finally:
        proc.stop()
