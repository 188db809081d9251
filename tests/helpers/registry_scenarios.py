"""Registries and clients for the operator scenarios (tests/interop/test_registry_scenarios.py).

Two registries over the same kind of storage, started the same way:

- **alone**: distribution v3.1.1 (``registry-v3.1.1``) with its own in-memory blob
  descriptor cache, the control;
- **with the service**: ``registry-descriptor`` (v3.1.1 with the ``descriptorcache``
  middleware, no cache of its own) and a real descriptor-server (in-memory cache,
  filesystem backend over the registry's own root, deletion on in both).

Both write distribution's access log (one line per answered request: method, path,
status, user agent), which is how the scenarios count what the registry answered
whatever the client made of it. The clients are the real ones (``crane``, ``oras``,
installed by ./dev into .tools/bin) with no credential store: ``DOCKER_CONFIG`` points
at an empty directory, so nothing is ever looked up.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import subprocess
import tarfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers.backend_support import REGISTRY_31, REGISTRY_DESCRIPTOR, RegistryProcess, RegistryRelease
from helpers.go_tools import require_go_tool
from helpers.support import ServerProcess, base_config, digest_of

#: distribution's access log on (``log.accesslog``), its own log at warn.
ACCESS_LOG: dict[str, Any] = {"log": {"level": "warn", "accesslog": {"disabled": False}}}
ACCESS_LINE = re.compile(
    r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d{3}) \S+ "[^"]*" "(?P<agent>[^"]*)"'
)
OCT = "application/octet-stream"


def middleware(target: str, **options: Any) -> dict[str, Any]:
    """The registry config's ``middleware`` section plugging in the service at ``target``."""
    return {"middleware": {"repository": [{"name": "descriptorcache", "options": {"target": target, **options}}]}}


def require_registry(release: RegistryRelease) -> str:
    if not release.available():
        pytest.skip(release.missing())
    return release.binary


@contextmanager
def registry_alone(workdir: Path) -> Iterator[RegistryProcess]:
    """The control: distribution v3.1.1 with its own in-memory blob descriptor cache."""
    require_registry(REGISTRY_31)
    registry = RegistryProcess(workdir / "alone", release=REGISTRY_31, cache="inmemory", extra=ACCESS_LOG)
    try:
        yield registry
    finally:
        registry.stop()


@dataclass
class Plugged:
    registry: RegistryProcess
    service: ServerProcess


@contextmanager
def registry_with_service(workdir: Path, service_config: Mapping[str, Any] | None = None) -> Iterator[Plugged]:
    """``registry-descriptor`` and a descriptor-server sharing the registry's storage root.

    ``service_config`` is merged into the service's ``storage.cache`` section (for
    example ``{"revalidate": "1s"}``); by default the service runs as shipped.
    """
    require_registry(REGISTRY_DESCRIPTOR)
    root = workdir / "plugged" / "storage"
    root.mkdir(parents=True)
    config = base_config(root)
    config["storage"]["cache"].update(service_config or {})
    service = ServerProcess(config, workdir / "plugged").start()
    try:
        registry = RegistryProcess(
            workdir / "plugged",
            release=REGISTRY_DESCRIPTOR,
            storage=root,
            extra={**ACCESS_LOG, **middleware(service.target, timeout="5s")},
        )
    except BaseException:
        service.stop()
        raise
    try:
        yield Plugged(registry, service)
    finally:
        registry.stop()
        service.stop()


@dataclass(frozen=True)
class Access:
    method: str
    path: str
    status: int
    agent: str


def access_log(registry: RegistryProcess) -> list[Access]:
    """Every request the registry answered so far, from its access log."""
    return [Access(m["method"], m["path"], int(m["status"]), m["agent"]) for m in ACCESS_LINE.finditer(registry.output)]


# -- real clients --------------------------------------------------------------------------


class Tool:
    """A client command line (``crane``, ``oras``) with an empty credential store."""

    def __init__(self, name: str, workdir: Path, *flags: str) -> None:
        self.binary = require_go_tool(name)
        self.flags = flags
        config = workdir / f"{name}-config"
        config.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "DOCKER_CONFIG": str(config), "HOME": str(config)}

    def run(self, *args: str, cwd: Path | None = None, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.binary, *args, *self.flags],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            env=self.env,
            cwd=cwd,
            check=False,
        )

    def __call__(self, *args: str, cwd: Path | None = None, timeout: float = 60.0) -> str:
        """Run and return stdout; a non-zero exit fails with the tool's own words."""
        out = self.run(*args, cwd=cwd, timeout=timeout)
        if out.returncode != 0:
            raise AssertionError(f"{Path(self.binary).name} {' '.join(args)} exited {out.returncode}: {out.stderr}")
        return out.stdout


class ImageClient:
    """Push, resolve, delete and pull an image of one layer, as a user does with a client."""

    name = ""

    def __init__(self, workdir: Path) -> None:
        raise NotImplementedError

    def push(self, ref: str, layer: Path) -> subprocess.CompletedProcess[str]:
        """Push an image whose one layer is the file ``layer`` (the exit status is the caller's)."""
        raise NotImplementedError

    def digest(self, ref: str) -> str:
        raise NotImplementedError

    def delete(self, ref: str) -> None:
        """Delete the manifest ``ref`` (``name@digest``)."""
        raise NotImplementedError


class Crane(ImageClient):
    """go-containerregistry's ``crane`` speaking plain HTTP (``--insecure``): ``append``
    of the layer to an empty OCI base, ``digest``, ``delete``, ``pull``."""

    name = "crane"

    def __init__(self, workdir: Path) -> None:
        self.tool = Tool("crane", workdir, "--insecure")

    def push(self, ref: str, layer: Path) -> subprocess.CompletedProcess[str]:
        return self.tool.run("append", "--oci-empty-base", "-f", str(layer), "-t", ref)

    def digest(self, ref: str) -> str:
        return self.tool("digest", ref).strip()

    def delete(self, ref: str) -> None:
        self.tool("delete", ref)

    def pull(self, ref: str, dest: Path) -> subprocess.CompletedProcess[str]:
        """``crane pull`` into a tarball at ``dest`` (``os.devnull`` to keep nothing)."""
        return self.tool.run("pull", ref, str(dest))


class Oras(ImageClient):
    """``oras`` speaking plain HTTP (``--plain-http``): ``push`` of the layer as an
    artifact's one file, ``resolve``, ``manifest delete``."""

    name = "oras"

    def __init__(self, workdir: Path) -> None:
        self.tool = Tool("oras", workdir)

    def push(self, ref: str, layer: Path) -> subprocess.CompletedProcess[str]:
        return self.tool.run(
            "push", "--plain-http", ref, f"{layer.name}:application/vnd.oci.image.layer.v1.tar+gzip", cwd=layer.parent
        )

    def digest(self, ref: str) -> str:
        return self.tool("resolve", "--plain-http", ref).strip()

    def delete(self, ref: str) -> None:
        self.tool("manifest", "delete", "--plain-http", "--force", ref)


IMAGE_CLIENTS: dict[str, type[ImageClient]] = {"crane": Crane, "oras": Oras}


def layer_tarball(path: Path, content: bytes) -> str:
    """A gzipped tar layer holding one file with ``content``, written reproducibly
    (mtime 0 in the tar and the gzip header): the same content is the same digest."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("payload")
        info.size = len(content)
        info.mtime = 0
        tar.addfile(info, io.BytesIO(content))
    data = gzip.compress(buf.getvalue(), mtime=0)
    path.write_bytes(data)
    return digest_of(data)


def reference(registry: RegistryProcess, name: str) -> str:
    """``host:port/name`` for crane and oras."""
    return f"{registry.url.removeprefix('http://')}/{name}"


# -- a push racing a delete (registry-go/cmd/registry-race) -------------------------------


@dataclass
class RaceResult:
    """What the rounds of ``registry-race`` left (its JSON, field for field)."""

    rounds: int
    #: Rounds whose repository link was gone at the end.
    link_gone: int
    #: Of those, the blobs the registry still advertised (HEAD 200).
    advertised: list[str]
    #: GETs answered 5xx at the end of a round (any round).
    get_5xx: list[str]
    #: Link gone: a later client push (HEAD, upload unless HEAD said it exists) did not
    #: leave the blob readable.
    repush_failed: list[str]
    #: Link present but HEAD not 200 (the blob is there and the registry hides it).
    hidden: list[str]
    #: Statuses of the racing requests ("push 201", "delete 404", ...).
    statuses: dict[str, int]
    #: Rounds that could not be run (the first push refused, a connection error).
    errors: list[str]
    seconds: float

    @property
    def failed_pushes(self) -> int:
        """Racing pushes the registry answered 5xx (or that got no answer)."""
        return sum(n for status, n in self.statuses.items() if status == "push error" or status.startswith("push 5"))

    def summary(self) -> str:
        return (
            f"{self.rounds} rounds in {self.seconds:.1f}s: link gone in {self.link_gone}, "
            f"advertised after the link was gone {len(self.advertised)}, GET 5xx {len(self.get_5xx)}, "
            f"re-push failed {len(self.repush_failed)}, present but hidden {len(self.hidden)}, "
            f"errors {len(self.errors)}; racing requests {dict(sorted(self.statuses.items()))}"
        )


def push_delete_race(registry: RegistryProcess, rounds: int, *, workers: int = 8, timeout: float = 600) -> RaceResult:
    """``rounds`` rounds of a push racing a delete against ``registry`` (``registry-race``,
    built by ./dev into .tools/bin: see its doc comment for what a round checks)."""
    binary = require_go_tool("registry-race")
    out = subprocess.run(
        [binary, "-url", registry.url, "-root", str(registry.root), "-rounds", str(rounds), "-workers", str(workers)],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert out.returncode == 0, f"registry-race exited {out.returncode}: {out.stderr}"
    data = json.loads(out.stdout)
    return RaceResult(**{k: ({} if k == "statuses" else []) if v is None else v for k, v in data.items()})


# -- a delete storm ----------------------------------------------------------------------------


@dataclass
class StormResult:
    """What a delete storm left: the registry's answers to the pulls, from its access log."""

    pulls: int
    #: The last line a failed pull printed, one per failed pull.
    pulls_failed: list[str]
    #: Cycles of the deleting loop (delete manifest and blobs, push them again).
    cycles: int
    #: Answers to the pulling clients' requests, by status.
    answers: dict[int, int]
    #: The 5xx answers to the pulling clients (method, path, status).
    errors: list[str]
    seconds: float

    @property
    def server_errors(self) -> int:
        return len(self.errors)

    def summary(self) -> str:
        return (
            f"{self.pulls} pulls in {self.seconds:.1f}s ({len(self.pulls_failed)} failed), {self.cycles} delete/push "
            f"cycles: {self.server_errors} answers 5xx; answers {dict(sorted(self.answers.items()))}"
        )


def _upload(http: httpx.Client, url: str, repo: str, content: bytes) -> None:
    resp = http.post(f"{url}/v2/{repo}/blobs/uploads/")
    if resp.status_code != 202:
        return
    location = resp.headers["Location"]
    if location.startswith("/"):
        location = url + location
    http.put(
        httpx.URL(location).copy_merge_params({"digest": digest_of(content)}),
        content=content,
        headers={"Content-Type": OCT},
    )


def delete_storm(registry: RegistryProcess, client: Crane, workdir: Path, *, loops: int, cycles: int) -> StormResult:
    """``loops`` threads each running ``crane pull`` of ``ns/storm:1`` over and over,
    while another thread deletes the image and pushes it again ``cycles`` times.

    A cycle deletes each blob, then the manifest (so pulls that already hold the
    manifest read blobs being deleted), and pushes them again; it starts once ``loops``
    pulls have finished since the previous one, so every cycle meets pulls in flight.

    The deleting loop pushes with the distribution API (every blob uploaded whatever a
    HEAD would say), so that each cycle restores the image even where a registry
    wrongly claims a deleted blob: the storm is about the reads.
    """
    repo = "ns/storm"
    workdir.mkdir(parents=True, exist_ok=True)
    layer = workdir / "storm-layer.tar.gz"
    layer_tarball(layer, os.urandom(4096))
    ref = reference(registry, f"{repo}:1")
    pushed = client.push(ref, layer)
    assert pushed.returncode == 0, pushed.stderr
    manifest_bytes = client.tool("manifest", ref).encode()
    manifest = json.loads(manifest_bytes)
    digests = [manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])]
    blobs = {d: httpx.get(f"{registry.url}/v2/{repo}/blobs/{d}").content for d in digests}
    manifest_digest = digest_of(manifest_bytes)
    before = len(access_log(registry))

    done = threading.Event()
    cycled = 0
    failures: list[str] = []
    finished = 0
    progress = threading.Condition()

    def pulled_since(mark: int) -> bool:
        return finished >= mark + loops

    def pushed_since(mark: int) -> bool:
        return cycled > mark or done.is_set()

    def deleter() -> None:
        nonlocal cycled
        try:
            with httpx.Client(timeout=30.0) as http:
                while cycled < cycles:
                    # One cycle per round of pulls: wait until as many pulls as there
                    # are loops have finished since the previous cycle.
                    with progress:
                        if not progress.wait_for(partial(pulled_since, finished), timeout=120):
                            return  # the pulls stopped (the caller sees the cycles missing)
                    for d in digests:
                        http.delete(f"{registry.url}/v2/{repo}/blobs/{d}")
                    http.delete(f"{registry.url}/v2/{repo}/manifests/{manifest_digest}")
                    for content in blobs.values():
                        _upload(http, registry.url, repo, content)
                    http.put(
                        f"{registry.url}/v2/{repo}/manifests/1",
                        content=manifest_bytes,
                        headers={"Content-Type": manifest["mediaType"]},
                    )
                    with progress:
                        cycled += 1
                        progress.notify_all()
        finally:
            with progress:
                done.set()
                progress.notify_all()

    def puller() -> None:
        nonlocal finished
        while not done.is_set():
            with progress:
                pushed = cycled
            pulled = client.pull(ref, Path(os.devnull))
            with progress:
                finished += 1
                progress.notify_all()
                if pulled.returncode != 0:
                    failures.append(pulled.stderr.strip().splitlines()[-1] if pulled.stderr.strip() else "")
                    # The image was being deleted: pull again once it is pushed again.
                    progress.wait_for(partial(pushed_since, pushed), timeout=120)

    start = time.monotonic()
    threads = [threading.Thread(target=puller) for _ in range(loops)]
    deleting = threading.Thread(target=deleter)
    deleting.start()
    for t in threads:
        t.start()
    deleting.join()
    for t in threads:
        t.join()
    seconds = time.monotonic() - start
    answers = [
        a for a in access_log(registry)[before:] if a.agent.startswith("crane") or "go-containerregistry" in a.agent
    ]
    return StormResult(
        pulls=finished,
        pulls_failed=failures,
        cycles=cycled,
        answers=dict(Counter(a.status for a in answers)),
        errors=[f"{a.method} {a.path} {a.status}" for a in answers if a.status >= 500],
        seconds=seconds,
    )
