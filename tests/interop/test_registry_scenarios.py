"""Deletion a registry operator can trust: the registry with the service is never staler
than the registry alone (issue 21's registry scenarios).

Each test runs the same scenario twice, in the same run, with real processes and real
clients (helpers/registry_scenarios.py):

- **alone**, the control: distribution v3.1.1 with its own in-memory blob descriptor
  cache;
- **with the service**: ``registry-descriptor`` (v3.1.1 with the ``descriptorcache``
  middleware) and a descriptor-server (in-memory cache) sharing the registry's
  filesystem root, deletion on in both.

1. Garbage collection: push ``ns/gc:1`` (crane, oras), delete its manifest, stop the
   registry, collect, start it again: HEAD and GET of the collected layer answer 404
   and pushing the same image again works. With the service the operator runs the
   documented procedure (``registry-descriptor garbage-collect CONFIG``, docs/registry-go.md);
   a collection run without it (distribution's own ``registry garbage-collect``) stops
   being answered within the service's default revalidation interval.
2. A push racing a delete, 2,000 rounds (``registry-race``): no blob is advertised
   once its repository link is gone, GET never answers 5xx, a later push works.
3. A delete storm: 16 ``crane pull`` loops while another loop deletes and re-pushes the
   image: the registry with the service answers no more 5xx than the registry alone.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from descriptor_server.config import parse_duration
from helpers.backend_support import REGISTRY_31, RegistryProcess
from helpers.registry_scenarios import (
    IMAGE_CLIENTS,
    Crane,
    ImageClient,
    Plugged,
    delete_storm,
    layer_tarball,
    push_delete_race,
    reference,
    registry_alone,
    registry_with_service,
    require_registry,
)
from helpers.support import Layout, run_server_command, wait_for

# -- 1. garbage collection -------------------------------------------------------------------


@dataclass(frozen=True)
class AfterCollection:
    """What a user sees of the collected layer once the registry is back."""

    head: int
    get: int
    #: The same image pushed again: the client's exit status and, on failure, its words.
    repush: str
    #: GET of the layer after that push (-1: a 200 with other bytes than the layer).
    get_after_repush: int


AS_ALONE = AfterCollection(head=404, get=404, repush="ok", get_after_repush=200)


def push_and_delete(registry: RegistryProcess, client: ImageClient, workdir: Path) -> tuple[Path, str, str]:
    """Push ``ns/gc:1`` (one random layer), then delete its manifest.

    Returns the layer file, its digest and the image reference.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    layer = workdir / "layer.tar.gz"
    digest = layer_tarball(layer, os.urandom(4096))
    ref = reference(registry, "ns/gc:1")
    pushed = client.push(ref, layer)
    assert pushed.returncode == 0, pushed.stderr
    manifest = client.digest(ref)
    # The layer is served before the collection, through whichever cache.
    assert httpx.head(blob_url(registry, "ns/gc", digest)).status_code == 200
    client.delete(f"{reference(registry, 'ns/gc')}@{manifest}")
    return layer, digest, ref


def blob_url(registry: RegistryProcess, repo: str, digest: str) -> str:
    return f"{registry.url}/v2/{repo}/blobs/{digest}"


def collect(registry: RegistryProcess, digest: str, gc: Callable[[RegistryProcess], str]) -> None:
    """Stop the registry, collect, start it again (the layer's data must be gone)."""
    registry.stop()
    output = gc(registry)
    assert not Layout(registry.root).blob_data(digest).exists(), f"the collection kept the layer:\n{output}"
    registry.restart()


def after_collection(
    registry: RegistryProcess, client: ImageClient, layer: Path, digest: str, ref: str
) -> AfterCollection:
    url = blob_url(registry, "ns/gc", digest)
    head = httpx.head(url).status_code
    get = httpx.get(url).status_code
    repushed = client.push(ref, layer)
    repush = "ok" if repushed.returncode == 0 else f"exit {repushed.returncode}: {repushed.stderr.strip()}"
    again = httpx.get(url)
    get_after = again.status_code if again.status_code != 200 or again.content == layer.read_bytes() else -1
    return AfterCollection(head, get, repush, get_after)


def distribution_gc(registry: RegistryProcess) -> str:
    """distribution's own ``registry garbage-collect`` (v3.1.1) over this registry's config."""
    binary = require_registry(REGISTRY_31)
    out = subprocess.run(
        [binary, "garbage-collect", str(registry.config_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")},
    )
    return out.stdout + out.stderr


@pytest.fixture(params=sorted(IMAGE_CLIENTS))
def client(request: pytest.FixtureRequest, tmp_path: Path) -> ImageClient:
    return IMAGE_CLIENTS[request.param](tmp_path)


def test_garbage_collection_then_the_same_push(tmp_path: Path, client: ImageClient) -> None:
    """The documented procedure: ``registry-descriptor garbage-collect CONFIG``
    (docs/registry-go.md) with the service running; the control runs distribution's."""
    with registry_alone(tmp_path) as alone:
        layer, digest, ref = push_and_delete(alone, client, tmp_path / "alone-image")
        collect(alone, digest, RegistryProcess.garbage_collect)
        control = after_collection(alone, client, layer, digest, ref)
    with registry_with_service(tmp_path) as plugged:
        layer, digest, ref = push_and_delete(plugged.registry, client, tmp_path / "plugged-image")
        # registry-descriptor garbage-collect: distribution's mark and sweep, and what it
        # removed checked again through the service (the service keeps running).
        collect(plugged.registry, digest, RegistryProcess.garbage_collect)
        service = after_collection(plugged.registry, client, layer, digest, ref)
    assert control == AS_ALONE, f"the registry alone: {control}"
    assert service == control, f"with the service: {service}; alone: {control}"


def default_revalidation(plugged: Plugged) -> float:
    """The service's ``storage.cache.revalidate`` as it runs (``--check-config`` of its
    own config file, which leaves the key to the default)."""
    checked = run_server_command(["--check-config", str(plugged.service.config_path)])
    assert checked.returncode == 0, checked.stderr
    value = yaml.safe_load(checked.stdout)["storage"]["cache"]["revalidate"]
    return parse_duration(value, "storage.cache.revalidate")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_garbage_collection_without_the_procedure_is_bounded_by_default(tmp_path: Path) -> None:
    """An operator who runs distribution's own ``registry garbage-collect`` (no service
    step): the service's default revalidation stops the collected layer being answered
    within its interval, and the same push works then."""
    client = Crane(tmp_path)
    with registry_alone(tmp_path) as alone:
        layer, digest, ref = push_and_delete(alone, client, tmp_path / "alone-image")
        collect(alone, digest, distribution_gc)
        control = after_collection(alone, client, layer, digest, ref)
    assert control == AS_ALONE, f"the registry alone: {control}"
    with registry_with_service(tmp_path) as plugged:
        interval = default_revalidation(plugged)
        assert interval > 0, (
            "revalidation is off by default (storage.cache.revalidate: 0s): after a garbage "
            "collection run without the service step the service answers the collected blob for good"
        )
        registry = plugged.registry
        layer, digest, ref = push_and_delete(registry, client, tmp_path / "plugged-image")
        collect(registry, digest, distribution_gc)
        url = blob_url(registry, "ns/gc", digest)
        # Within the interval (and a backend round trip) of the last time the service
        # confirmed the layer, HEAD stops advertising it.
        wait_for(lambda: httpx.head(url).status_code == 404, timeout=interval + 10, interval=0.1)
        service = after_collection(registry, client, layer, digest, ref)
    assert service == control, f"with the service, {interval}s after the collection: {service}; alone: {control}"


# -- 2. a push racing a delete ----------------------------------------------------------------

RACE_ROUNDS = 2000


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_push_racing_a_delete_never_leaves_a_blob_advertised(tmp_path: Path) -> None:
    with registry_alone(tmp_path) as alone:
        control = push_delete_race(alone, RACE_ROUNDS)
    with registry_with_service(tmp_path) as plugged:
        service = push_delete_race(plugged.registry, RACE_ROUNDS)
    report = f"\nwith the service: {service.summary()}\nalone: {control.summary()}"
    print(report)
    assert control.rounds == service.rounds == RACE_ROUNDS, report + f"\n{control.errors[:5]}{service.errors[:5]}"
    # The rounds did leave links deleted after the last push (the scenario ran).
    assert service.link_gone > 0, report
    assert service.advertised == [], report
    assert service.get_5xx == [], report
    assert service.repush_failed == [], report
    assert service.hidden == [], report
    # No push fails where the registry alone's do not (the service's repository Clear
    # once removed the link's directory under a push writing the link: 500).
    assert service.failed_pushes <= control.failed_pushes, report


# -- 3. a delete storm -----------------------------------------------------------------------

STORM_LOOPS = 16
STORM_CYCLES = 25


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_delete_storm_answers_no_more_5xx_than_the_registry_alone(tmp_path: Path) -> None:
    client = Crane(tmp_path)
    with registry_alone(tmp_path) as alone:
        control = delete_storm(alone, client, tmp_path / "alone", loops=STORM_LOOPS, cycles=STORM_CYCLES)
    with registry_with_service(tmp_path) as plugged:
        service = delete_storm(plugged.registry, client, tmp_path / "plugged", loops=STORM_LOOPS, cycles=STORM_CYCLES)
    report = f"\nwith the service: {service.summary()}\nalone: {control.summary()}"
    print(report)
    # Both storms ran: every cycle happened, and pulls both succeeded and met a deletion.
    for storm in (control, service):
        assert storm.cycles == STORM_CYCLES, report
        assert 0 < len(storm.pulls_failed) < storm.pulls, report
    assert service.server_errors <= control.server_errors, report + "\n" + "\n".join(service.errors[:10])
