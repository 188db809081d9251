"""The container image, built by ``./dev image`` from deploy/Containerfile and run with podman.

The module builds the image once (``./dev image``: a Debian bookworm base made with
debootstrap and kept in podman's store, then ``podman build``), writes its OCI archive,
and runs it as an operator would on this kind of machine: runc (crun refuses the hybrid
cgroups here), a read-only root, an arbitrary non-root UID, every capability dropped,
no new privileges. The containers share the host's network and listen on loopback
ports they pick (``127.0.0.1:0``), read from their logs.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import shutil
import subprocess
import tarfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from descriptor_client import DescriptorClient
from descriptor_client.errors import BlobUnknownError, UnavailableError
from helpers.backend_support import REGION, S3_ACCESS, S3_SECRET, MotoServer, S3Layout
from helpers.go_tools import require_go_tool
from helpers.support import Layout, digest_of

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
TAG = "localhost/descriptor-service:test"
SERVICE = "descriptor.v1.BlobDescriptorService"
USER = "54321:54321"  # not the image's 10001: any UID must do
#: The flags docs/deploy.md gives for podman on this kind of machine, and the confinement.
RUN_FLAGS = [
    "--runtime", "runc",
    "--ulimit", "nofile=20000:20000",
    "--ulimit", "nproc=20000:20000",
    "--read-only",
    "--user", USER,
    "--cap-drop", "all",
    "--security-opt", "no-new-privileges",
    "--network", "host",
]  # fmt: skip
LOOPBACK = {
    "DESCRIPTOR_GRPC_ADDR": "127.0.0.1:0",
    "DESCRIPTOR_GRPC_HEALTHADDR": "127.0.0.1:0",
    "DESCRIPTOR_HTTP_DEBUG_ADDR": "127.0.0.1:0",
}
LISTENING = re.compile(r"listening on (127\.0\.0\.1:\d+)")
HEALTH = re.compile(r"health-only listener at (127\.0\.0\.1:\d+)")
METRICS = re.compile(r"metrics endpoint at (http://127\.0\.0\.1:\d+/[^\s\"]*)")


def podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``./dev image``: the image tagged TAG, and its OCI archive."""
    for binary in ("podman", "debootstrap", "runc"):
        if shutil.which(binary) is None:
            pytest.skip(f"{binary} is not installed (./dev test installs Debian's)")
    archive = tmp_path_factory.mktemp("image") / "descriptor-service.oci.tar"
    started = time.monotonic()
    done = subprocess.run(
        [str(ROOT / "dev"), "image", "--tag", TAG, "--output", str(archive)],
        capture_output=True, text=True, timeout=1500, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    print(f"./dev image took {time.monotonic() - started:.0f} s")
    return archive


class Container:
    """One ``podman run -d`` of the image, removed at the end."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, stop_timeout: int = 40) -> None:
        self.name = f"descriptor-test-{uuid.uuid4().hex[:12]}"
        self.stop_timeout = stop_timeout
        flags = [*RUN_FLAGS, "--stop-timeout", str(stop_timeout)]
        for key, value in (env or {}).items():
            flags += ["-e", f"{key}={value}"]
        done = podman("run", "-d", "--name", self.name, *flags, *args)
        assert done.returncode == 0, done.stderr

    def logs(self) -> str:
        done = podman("logs", self.name)
        return done.stdout + done.stderr

    def wait_for(self, pattern: re.Pattern[str], timeout: float = 60) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            m = pattern.search(self.logs())
            if m:
                return m
            state = podman("inspect", "--format", "{{.State.Status}}", self.name).stdout.strip()
            assert state in {"running", "stopping"}, f"container {state}:\n{self.logs()}"
            assert time.monotonic() < deadline, f"no {pattern.pattern!r} in:\n{self.logs()}"
            time.sleep(0.2)

    def exec(self, *args: str) -> subprocess.CompletedProcess[str]:
        return podman("exec", self.name, *args)

    def exit_code(self) -> int:
        return int(podman("inspect", "--format", "{{.State.ExitCode}}", self.name).stdout.strip())

    def remove(self) -> None:
        podman("rm", "--force", "--time", "0", self.name)


@contextlib.contextmanager
def running(*args: str, **kwargs: Any) -> Iterator[Container]:
    container = Container(*args, **kwargs)
    try:
        yield container
    finally:
        container.remove()


def probe(health: str, service: str = SERVICE) -> str:
    done = subprocess.run(
        [require_go_tool("grpc_health_probe"), "-addr", health, "-service", service, "-connect-timeout", "5s"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    return (done.stdout + done.stderr).strip()


def wait_serving(health: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while (status := probe(health)) != "status: SERVING":
        assert time.monotonic() < deadline, status
        time.sleep(0.2)


# -- the artefact ---------------------------------------------------------------------------


def test_the_oci_archive_holds_one_image(image: Path) -> None:
    with tarfile.open(image) as tar:
        layout = json.load(tar.extractfile("oci-layout"))  # type: ignore[arg-type]
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
    assert layout["imageLayoutVersion"] == "1.0.0"
    (manifest,) = index["manifests"]
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert image.stat().st_size < 150 * 2**20  # about 85 MB today


def test_the_image_config(image: Path) -> None:
    (info,) = json.loads(podman("image", "inspect", TAG).stdout)
    config = info["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["descriptor-server"]
    assert config["StopSignal"] == "SIGTERM"
    baked = yaml.safe_load((ROOT / "deploy" / "container-config.yml").read_text())
    listeners = {baked["grpc"]["addr"], baked["grpc"]["healthaddr"], baked["http"]["debug"]["addr"]}
    assert set(config["ExposedPorts"]) == {f"{a.rsplit(':', 1)[1]}/tcp" for a in listeners}
    revision = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False)
    if revision.returncode == 0:
        assert info["Labels"]["org.opencontainers.image.revision"] == revision.stdout.strip()


def test_version(image: Path) -> None:
    done = podman("run", "--rm", *RUN_FLAGS, TAG, "--version")
    assert done.returncode == 0, done.stderr
    assert re.match(r"descriptor-server \d+\.\d+\.\d+ .*python 3\.11", done.stdout), done.stdout


def test_every_backend_and_cache_is_in_the_image(image: Path) -> None:
    """The optional modules each backend and cache imports (boto3 for s3, redis for redis)."""
    code = "import boto3, redis, hiredis, httpx, descriptor_server.backends.s3, descriptor_server.caches.redis"
    done = podman("run", "--rm", *RUN_FLAGS, "--entrypoint", "python3", TAG, "-c", code)
    assert done.returncode == 0, done.stderr
    done = podman("run", "--rm", *RUN_FLAGS, "--entrypoint", "python3", TAG, "-m", "pip", "--version")
    assert done.returncode != 0  # no pip in the runtime environment


# -- running it -----------------------------------------------------------------------------


def test_serves_from_a_read_only_registry_as_any_user(image: Path, tmp_path: Path) -> None:
    layout = Layout(tmp_path / "registry")
    blob = layout.push("team/app", b"a layer served from the image")
    mount = f"{layout.root}:/var/lib/registry:ro"
    with running("-v", mount, TAG, env=LOOPBACK) as c:
        target = c.wait_for(LISTENING).group(1)
        health = c.wait_for(HEALTH).group(1)
        metrics = c.wait_for(METRICS).group(1)
        wait_serving(health)
        assert probe(health, "") == "status: SERVING"
        done = c.exec("descriptorctl", "--target", target, "--json", "stat", "--repository", "team/app", blob)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["digest"] == blob
        assert json.loads(done.stdout)["size"] == len(b"a layer served from the image")
        with urllib.request.urlopen(metrics, timeout=10) as resp:
            assert b"descriptor_build_info" in resp.read()
        # Confined: the UID given, no capability, no new privileges, nothing writable but /tmp.
        assert c.exec("id", "-u").stdout.strip() == USER.split(":", maxsplit=1)[0]
        status = c.exec("cat", "/proc/self/status").stdout
        assert re.search(r"^CapEff:\s+0+$", status, re.M), status
        assert re.search(r"^NoNewPrivs:\s+1$", status, re.M), status
        for path in ("/opt/descriptor-service/x", "/etc/descriptor/x", "/var/lib/registry/x"):
            assert c.exec("touch", path).returncode != 0, path
        assert c.exec("touch", "/tmp/x").returncode == 0


class SlowRegistry(http.server.ThreadingHTTPServer):
    """A registry whose blob HEAD waits for ``release``: a backend call held in flight."""

    def __init__(self, content: bytes) -> None:
        self.content = content
        self.head_seen = threading.Event()
        self.release = threading.Event()
        super().__init__(("127.0.0.1", 0), SlowHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class SlowHandler(http.server.BaseHTTPRequestHandler):
    server: SlowRegistry

    def do_GET(self) -> None:  # the backend's probe: GET /v2/
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_HEAD(self) -> None:
        self.server.head_seen.set()
        self.server.release.wait(60)
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.server.content)))
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Docker-Content-Digest", digest_of(self.server.content))
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_stop_drains_the_call_in_flight_within_the_stop_timeout(image: Path, tmp_path: Path) -> None:
    """``podman stop``: SIGTERM, health NOT_SERVING, new calls UNAVAILABLE, the call in flight
    answered, exit 0, all before ``--stop-timeout`` (above grpc.drain) would SIGKILL."""
    content = b"a layer whose HEAD is slow"
    registry = SlowRegistry(content)
    threading.Thread(target=registry.serve_forever, daemon=True).start()
    drain, stop_timeout = 20, 30
    config = {
        "storage": {"registry": {"url": registry.url}, "cache": {"blobdescriptor": "none"}},
        "grpc": {"addr": "127.0.0.1:0", "healthaddr": "127.0.0.1:0", "drain": f"{drain}s"},
    }
    (tmp_path / "config.yml").write_text(yaml.safe_dump(config))
    mount = f"{tmp_path / 'config.yml'}:/etc/descriptor/config.yml:ro"
    try:
        with running("-v", mount, TAG, stop_timeout=stop_timeout) as c:
            target = c.wait_for(LISTENING).group(1)
            health = c.wait_for(HEALTH).group(1)
            wait_serving(health)
            results: list[Any] = []
            with DescriptorClient(target, timeout=60) as client:
                call = threading.Thread(
                    target=lambda: results.append(client.stat(digest_of(content), repository="team/app"))
                )
                call.start()
                assert registry.head_seen.wait(30), "the Stat never reached the backend"
                started = time.monotonic()
                stop = subprocess.Popen(["podman", "stop", c.name], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                try:
                    c.wait_for(re.compile(r"draining: refusing new calls, waiting for 1 in flight"), timeout=30)
                    assert "NOT_SERVING" in probe(health)
                    with pytest.raises(UnavailableError):
                        client.stat(digest_of(b"another"), repository="team/app", timeout=5)
                    registry.release.set()
                    call.join(30)
                    assert stop.wait(stop_timeout + 10) == 0
                finally:
                    registry.release.set()
                    if stop.poll() is None:
                        stop.kill()
                stopped = time.monotonic() - started
            assert [d.digest for d in results] == [digest_of(content)]
            assert c.exit_code() == 0, c.logs()  # not 137: no SIGKILL
            assert stopped < stop_timeout, stopped
            assert c.logs().rstrip().endswith("descriptor_server: stopped")
    finally:
        registry.shutdown()
        registry.server_close()


def test_an_s3_config_serves(image: Path, tmp_path: Path) -> None:
    """The s3 backend (boto3 in the image) against moto's S3 server on loopback."""
    moto = MotoServer(tmp_path)
    try:
        s3 = moto.client()
        s3.create_bucket(Bucket="registry")
        blob = S3Layout(s3, "registry").put_blob(b"a layer in S3")
        (tmp_path / "access").write_text(S3_ACCESS)
        (tmp_path / "secret").write_text(S3_SECRET)
        os.chmod(tmp_path / "access", 0o644)
        os.chmod(tmp_path / "secret", 0o644)
        config = {
            "storage": {
                "s3": {
                    "bucket": "registry",
                    "region": REGION,
                    "regionendpoint": moto.endpoint,
                    "forcepathstyle": True,
                    "accesskeyfile": "/etc/descriptor/secrets/access",
                    "secretkeyfile": "/etc/descriptor/secrets/secret",
                },
            },
            "grpc": {"addr": "127.0.0.1:0", "healthaddr": "127.0.0.1:0"},
        }
        (tmp_path / "config.yml").write_text(yaml.safe_dump(config))
        secrets = tmp_path / "secrets"
        secrets.mkdir()
        for name in ("access", "secret"):
            shutil.move(tmp_path / name, secrets / name)
        args = [
            "-v", f"{tmp_path / 'config.yml'}:/etc/descriptor/config.yml:ro",
            "-v", f"{secrets}:/etc/descriptor/secrets:ro",
            "-e", "AWS_EC2_METADATA_DISABLED=true",
        ]  # fmt: skip
        with running(*args, TAG) as c:
            target = c.wait_for(LISTENING).group(1)
            assert "backend s3" in c.logs()
            wait_serving(c.wait_for(HEALTH).group(1))
            with DescriptorClient(target, timeout=30) as client:
                assert client.stat(blob).size == len(b"a layer in S3")
                with pytest.raises(BlobUnknownError):
                    client.stat(digest_of(b"not in the bucket"))
    finally:
        moto.stop()


def docs_helm_example() -> str:
    """The values of docs/deploy.md's Helm example (the S3 and Redis one)."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    m = re.search(r"Example: a Redis cache with a password, in front of S3.*?```yaml\n(.*?)```", text, re.S)
    assert m, "docs/deploy.md has no Helm example"
    return m.group(1)


def test_the_docs_helm_example_is_accepted_by_the_image(image: Path, tmp_path: Path) -> None:
    """The config the chart renders from the docs' example, with its secrets mounted as the
    chart mounts them, passes the image's own ``--check-config`` (boto3 is in it)."""
    helm = ROOT / ".tools" / "bin" / "helm"
    binary = str(helm) if helm.is_file() else shutil.which("helm")
    if binary is None:
        pytest.skip("helm not installed (./dev test builds it into .tools/bin)")
    values = tmp_path / "values.yml"
    values.write_text(docs_helm_example())
    done = subprocess.run(
        [binary, "template", "rel", str(ROOT / "deploy" / "helm" / "descriptor-service"), "-f", str(values)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    objects = [d for d in yaml.safe_load_all(done.stdout) if d]
    (configmap,) = [d for d in objects if d["kind"] == "ConfigMap"]
    (deployment,) = [d for d in objects if d["kind"] == "Deployment"]
    config = tmp_path / "config.yml"
    config.write_text(configmap["data"]["config.yml"])
    config.chmod(0o644)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args = ["-v", f"{config}:/etc/descriptor/config.yml:ro"]
    for mount in container["volumeMounts"]:
        if mount["name"] == "secrets":  # the Secret's keys as the pod sees them
            secrets = tmp_path / "secrets"
            secrets.mkdir()
            for item in yaml.safe_load(docs_helm_example())["secretFiles"]:
                (secrets / item["secretKey"]).write_text("not a real secret")
                (secrets / item["secretKey"]).chmod(0o644)
            args += ["-v", f"{secrets}:{mount['mountPath']}:ro"]
    done = podman(
        "run", "--rm", *RUN_FLAGS, *args, TAG, *container["args"], "--check-config", "/etc/descriptor/config.yml"
    )
    assert done.returncode == 0, done.stderr
    assert "s3:" in done.stdout
    assert "redis-master:6379" in done.stdout
