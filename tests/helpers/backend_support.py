"""Real peers for the backend tests: moto's S3 server, distribution registries (2.8, v3.1.1).

Each is a real process on a free loopback port, stopped by the fixture that started
it (also on failure).
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import shutil
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import yaml

from helpers.support import digest_of, free_port

# No credential lookup may ever leave the machine (boto3 would ask the EC2 metadata
# address when no keys are given).
S3_ENV = {"AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
S3_ACCESS = "testing-access"
S3_SECRET = "testing-secret"
REGION = "us-east-1"


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


#: A port from free_port() is free when picked but may be taken before the child binds it.
PORT_ATTEMPTS = 5


def lost_port_race(err: BaseException, log: Path) -> bool:
    """Whether a child failed to start because its port was taken meanwhile."""
    return isinstance(err, RuntimeError) and "address already in use" in log.read_text(errors="replace").lower()


def wait_http(
    url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0, verify: ssl.SSLContext | bool = True
) -> None:
    """Wait until ``url`` answers anything over HTTP (or fail if the process died)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before serving")
        try:
            httpx.get(url, timeout=1.0, verify=verify)
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer in {timeout}s") from None
            time.sleep(0.05)


def health_of(target: str) -> str:
    """The server's health for the descriptor service (SERVING / NOT_SERVING)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        resp = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="descriptor.v1.BlobDescriptorService"), timeout=10
        )
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))


# -- S3 (moto's stand-alone server) ------------------------------------------------------


class MotoServer:
    """``python -m moto.server`` on a free loopback port."""

    def __init__(self, workdir: Path) -> None:
        self.log = (workdir / "moto.log").open("wb")
        for attempt in range(PORT_ATTEMPTS):
            self.port = free_port()
            self.endpoint = f"http://127.0.0.1:{self.port}"
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdin=subprocess.DEVNULL,
                stdout=self.log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **S3_ENV},
            )
            try:
                wait_http(self.endpoint + "/moto-api/", self.proc)
                break
            except BaseException as err:
                if attempt + 1 < PORT_ATTEMPTS and lost_port_race(err, workdir / "moto.log"):
                    continue
                self.stop()
                raise

    def client(self) -> Any:
        import boto3

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=S3_ACCESS,
            aws_secret_access_key=S3_SECRET,
        )

    def stop(self) -> None:
        if hasattr(self, "proc"):
            stop_process(self.proc)
        self.log.close()


def s3_storage(endpoint: str, bucket: str, rootdirectory: str = "") -> dict[str, Any]:
    """``storage.s3`` as a user writes it for an S3-compatible server."""
    return {
        "bucket": bucket,
        "region": REGION,
        "regionendpoint": endpoint,
        "accesskey": S3_ACCESS,
        "secretkey": S3_SECRET,
        "rootdirectory": rootdirectory,
        "forcepathstyle": True,
    }


class S3Layout:
    """Writes distribution's layout into a bucket, as its s3 storage driver does."""

    def __init__(self, client: Any, bucket: str, rootdirectory: str = "") -> None:
        self.client = client
        self.bucket = bucket
        root = rootdirectory.strip("/")
        self.prefix = f"{root}/" if root else ""

    def data_key(self, digest: str) -> str:
        alg, hexpart = digest.split(":", 1)
        return f"{self.prefix}docker/registry/v2/blobs/{alg}/{hexpart[:2]}/{hexpart}/data"

    def link_key(self, repository: str, digest: str) -> str:
        alg, hexpart = digest.split(":", 1)
        return f"{self.prefix}docker/registry/v2/repositories/{repository}/_layers/{alg}/{hexpart}/link"

    def put_blob(self, content: bytes, algorithm: str = "sha256") -> str:
        digest = digest_of(content, algorithm)
        self.client.put_object(Bucket=self.bucket, Key=self.data_key(digest), Body=content)
        return digest

    def put_link(self, repository: str, digest: str, target: str | None = None) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.link_key(repository, digest), Body=(target or digest))

    def _exists(self, key: str) -> bool:
        resp = self.client.list_objects_v2(Bucket=self.bucket, Prefix=key)
        return any(obj["Key"] == key for obj in resp.get("Contents", []))

    def has_blob(self, digest: str) -> bool:
        return self._exists(self.data_key(digest))

    def has_link(self, repository: str, digest: str) -> bool:
        return self._exists(self.link_key(repository, digest))


# -- distribution registries: Debian's 2.8 and v3.1.1 from the Go module proxy -------------

TOOLS_BIN = Path(__file__).resolve().parents[2] / ".tools" / "bin"


@dataclass(frozen=True)
class RegistryRelease:
    """A distribution registry binary and the config dialect of its release."""

    name: str  # the test id: "2.8" or "3.1.1"
    binary: str
    #: 2.8 takes ``redis.addr`` (one address); v3 takes go-redis's ``redis.addrs``.
    redis_addrs: bool

    def available(self) -> bool:
        return os.access(self.binary, os.X_OK)

    def missing(self) -> str:
        how = "./dev test installs it" if self.name == "2.8" else "./dev test builds it with go install"
        return f"distribution {self.name} ({self.binary}) is not installed ({how})"


#: Debian's docker-registry, and distribution v3.1.1 built by ./dev (``go install
#: github.com/distribution/distribution/v3/cmd/registry@v3.1.1`` into .tools/bin).
REGISTRY_28 = RegistryRelease("2.8", shutil.which("docker-registry") or "/usr/bin/docker-registry", redis_addrs=False)
REGISTRY_31 = RegistryRelease("3.1.1", str(TOOLS_BIN / "registry-v3.1.1"), redis_addrs=True)
#: v3.1.1 with this service compiled in as its blob descriptor cache (registry-go/).
REGISTRY_DESCRIPTOR = RegistryRelease("3.1.1+descriptorcache", str(TOOLS_BIN / "registry-descriptor"), redis_addrs=True)
REGISTRY_RELEASES = (REGISTRY_28, REGISTRY_31)


def registry_available() -> bool:
    return REGISTRY_28.available()


class RegistryProcess:
    """distribution's registry with filesystem storage on a free loopback port.

    ``release`` picks the binary (Debian's 2.8 by default); ``cache`` sets its own blob
    descriptor cache (``inmemory`` or ``redis``; none when None), ``redis`` the address
    of the Redis it then uses, and ``extra`` is merged into the top of its config (for
    ``middleware``).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        delete: bool = True,
        auth: Mapping[str, Any] | None = None,
        tls: tuple[Path, Path, Path] | None = None,
        release: RegistryRelease = REGISTRY_28,
        cache: str | None = None,
        redis: str | None = None,
        extra: Mapping[str, Any] | None = None,
        storage: Path | None = None,
    ) -> None:
        """``tls`` is (certificate, key, CA that signed it): serve https:// with them;
        ``redis`` is the ``host:port`` of a Redis for the registry's own blob descriptor
        cache (``cache`` defaults to ``redis`` then)."""
        workdir.mkdir(parents=True, exist_ok=True)
        self.release = release
        self.root = storage or workdir / "storage"
        self.verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(tls[2])) if tls else True
        self.log = (workdir / "registry.log").open("wb")
        for attempt in range(PORT_ATTEMPTS):
            try:
                self._start(workdir, delete=delete, auth=auth, tls=tls, cache=cache, redis=redis, extra=extra or {})
                break
            except BaseException as err:
                if attempt + 1 < PORT_ATTEMPTS and lost_port_race(err, workdir / "registry.log"):
                    continue
                self.stop()
                raise

    def _start(
        self,
        workdir: Path,
        *,
        delete: bool,
        auth: Mapping[str, Any] | None,
        tls: tuple[Path, Path, Path] | None,
        cache: str | None,
        redis: str | None,
        extra: Mapping[str, Any],
    ) -> None:
        self.port = free_port()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.root)},
                "delete": {"enabled": delete},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": f"127.0.0.1:{self.port}", "secret": "test-secret"},
        }
        cache = cache or ("redis" if redis else None)
        if cache:
            config["storage"]["cache"] = {"blobdescriptor": cache}
        if redis:
            config["redis"] = {"addrs": [redis], "db": 0} if self.release.redis_addrs else {"addr": redis, "db": 0}
        if auth:
            config["auth"] = dict(auth)
        if tls:
            config["http"]["tls"] = {"certificate": str(tls[0]), "key": str(tls[1])}
        config.update(extra)
        self.config_path = workdir / "registry.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.proc = subprocess.Popen(
            [self.release.binary, "serve", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")},
        )
        wait_http(self.url + "/v2/", self.proc, verify=self.verify)

    @property
    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")

    def restart(self) -> None:
        """Start the stopped registry again: same config, port, storage and log."""
        if self.proc.poll() is None:
            raise RuntimeError("the registry is still running: stop() it first")
        self.log = Path(self.log.name).open("ab")  # noqa: SIM115 (closed by stop(), as in __init__)
        self.proc = subprocess.Popen(
            [self.release.binary, "serve", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")},
        )
        wait_http(self.url + "/v2/", self.proc, verify=self.verify)

    def garbage_collect(self) -> str:
        """``registry garbage-collect`` on this registry's storage, as an operator runs it."""
        out = subprocess.run(
            [self.release.binary, "garbage-collect", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")},
        )
        return out.stdout + out.stderr

    def stop(self) -> None:
        if hasattr(self, "proc"):
            stop_process(self.proc)
        self.log.close()


def push_blob(
    url: str,
    repository: str,
    content: bytes,
    headers: Mapping[str, str] | None = None,
    verify: ssl.SSLContext | bool = True,
) -> str:
    """Push a blob with the distribution API: POST an upload, then PUT it with ?digest=."""
    digest = digest_of(content)
    with httpx.Client(timeout=10.0, headers=dict(headers or {}), verify=verify) as http:
        resp = http.post(f"{url}/v2/{repository}/blobs/uploads/")
        assert resp.status_code == 202, (resp.status_code, resp.text)
        location = resp.headers["Location"]
        if location.startswith("/"):
            location = url + location
        resp = http.put(
            httpx.URL(location).copy_merge_params({"digest": digest}),
            content=content,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert resp.status_code == 201, (resp.status_code, resp.text)
    return digest


def htpasswd_line(user: str, password: str) -> str:
    import bcrypt

    return f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()}"


# -- a token server for distribution's `token` auth ---------------------------------------


class TokenServer:
    """A Docker token server: issues JWTs signed under a self-made root CA (``helpers.tokens``).

    distribution's ``auth.token`` verifies them against ``rootcertbundle`` (the root
    certificate written to ``cert_path``) through the ``x5c`` header, which carries the
    signing certificate. The server grants the actions asked for in ``scope`` to
    ``user``/``password`` (HTTP basic) and records every request it served.
    """

    def __init__(
        self, workdir: Path, *, user: str, password: str, service: str = "test-registry", algorithm: str = "RS256"
    ) -> None:
        from helpers.tokens import TokenIssuer

        self.user, self.password, self.service, self.issuer = user, password, service, "test-token-issuer"
        self.tokens = TokenIssuer(workdir, algorithm=algorithm, issuer=self.issuer, service=service)
        self.cert_path = self.tokens.root_path
        self.requests: list[dict[str, Any]] = []
        #: What the token responses say: ``expires_in``, and ``issued_at`` this many
        #: seconds ago (None: no ``issued_at``), as distribution's token server sends them.
        self.expires_in = 300
        self.issued_ago: float | None = None
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())  # bound here: no race
        self.port = self.httpd.server_address[1]
        self.realm = f"http://127.0.0.1:{self.port}/token"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def registry_auth(self) -> dict[str, Any]:
        """The registry's ``auth`` section trusting this server."""
        return {"token": self.tokens.auth_config(self.realm)}

    def issue(self, scopes: list[str], **claims: Any) -> str:
        return self.tokens.mint(scopes, subject=self.user, **claims)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = parse_qs(urlparse(self.path).query)
                auth = self.headers.get("Authorization", "")
                want = "Basic " + base64.b64encode(f"{server.user}:{server.password}".encode()).decode()
                server.requests.append({"query": query, "authorized": auth == want})
                if auth != want:
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                token = server.issue(query.get("scope", []))
                answer: dict[str, Any] = {"token": token, "expires_in": server.expires_in}
                if server.issued_ago is not None:
                    issued = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=server.issued_ago)
                    answer["issued_at"] = issued.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                body = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)
