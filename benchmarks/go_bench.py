"""The Go side of ``./dev bench``: ghz and the Go client against the service, and a
distribution v3.1.1 registry's blob HEAD rate with each blob descriptor cache.

Called from ``run.py`` (``unary`` while its servers run, ``registry_heads`` after);
``rows`` adds its lines to the result table. The binaries are the ones ``./dev``
builds into ``.tools/bin``: ``ghz`` (pinned ``go install``), ``registry-v3.1.1``
(distribution's own ``cmd/registry@v3.1.1``), ``registry-descriptor`` (the same
release with this service compiled in as its cache, ``registry-go/``) and
``descriptor-bench`` (``registry-go/cmd/descriptor-bench``: the Go client's Stat
loop and an HTTP HEAD loop). A missing one skips its rows, saying so.

Registry HEADs: one blob is pushed through each registry over HTTP, then
``descriptor-bench head`` sends HEAD /v2/<repo>/blobs/<digest> over 1 and over 16
keep-alive connections, each with one request in flight. Three set-ups, same
storage driver and release:

- ``inmemory``: the registry's own ``storage.cache.blobdescriptor: inmemory``;
- ``redis``: its own ``redis`` cache on the Valkey/Redis ``run.py`` started;
- ``service``: ``registry-descriptor`` with the ``descriptorcache`` middleware and no
  cache of its own, in front of a descriptor-server (in-memory cache, filesystem
  backend over the registry's root); the server's GetMetrics must count one hit per
  HEAD. With the middleware's default ``batchstat: true`` (Stats that arrive while
  others are in flight go out as one BatchStat), and ``service_unbatched`` with
  ``batchstat: false`` (one Stat RPC per HEAD).

The serving side (registry, plus Redis or the descriptor-server) is pinned to CPU 0
and the load generators to CPU 1, as in ``run.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import httpx
import yaml
from common import PIN, ROOT, SERVICE, say

TOOLS = ROOT / ".tools" / "bin"
CLIENTS = (1, 16)


class ServerLike(Protocol):
    @property
    def target(self) -> str: ...

    def stop(self) -> None: ...


def tool(name: str) -> str | None:
    path = TOOLS / name
    return str(path) if os.access(path, os.X_OK) else None


def pinned(cmd: list[str], cpu: str) -> list[str]:
    return ["taskset", "-c", cpu, *cmd] if PIN else cmd


def run_json(cmd: list[str], timeout: float = 600) -> dict[str, Any]:
    out = subprocess.run(pinned(cmd, "1"), capture_output=True, text=True, timeout=timeout, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    result: dict[str, Any] = json.loads(out.stdout)
    return result


# -- unary Stat: ghz and the Go client, beside h2load ----------------------------------------


def ghz_stat(
    ghz: str, target: str, digest: str, n: int, *, repository: str = "", metadata: Mapping[str, str] | None = None
) -> float:
    """ghz over one connection with 16 concurrent calls (h2load's shape); calls/s."""
    # ghz v0.120.0's reflection client does not find the service through the server's
    # reflection (grpcurl does): it reads the repository's proto instead.
    cmd = [ghz, "--insecure", "--proto", str(ROOT / "protos/descriptor/v1/descriptor.proto")]
    cmd += ["--import-paths", f"{ROOT / 'protos'},{ROOT / 'third_party/googleapis'}"]
    request = {"digest": digest, "repository": repository} if repository else {"digest": digest}
    cmd += ["--call", f"{SERVICE}/Stat", "-d", json.dumps(request)]
    if metadata:
        cmd += ["--metadata", json.dumps(dict(metadata))]
    cmd += ["-n", str(n), "-c", "16", "--connections", "1", "--format", "json", target]
    res = run_json(cmd)
    codes = res.get("statusCodeDistribution", {})
    if codes != {"OK": n}:
        raise RuntimeError(f"ghz: status codes {codes} for {n} calls")
    return float(res["rps"])


def go_client_stat(bench: str, target: str, digest: str, n: int) -> tuple[float, int]:
    """The Go client (client-go) with 16 goroutines on one connection: calls/s, and
    the calls it made (one warm-up Stat beside the n measured)."""
    res = run_json([bench, "stat", "-target", target, "-digest", digest, "-c", "16", "-n", str(n)])
    if res["errors"]:
        raise RuntimeError(f"descriptor-bench stat: {res['errors']} errors ({res.get('first_error')})")
    return float(res["rps"]), n + int(res["warmup_calls"])


def unary(
    servers: Mapping[str, ServerLike],
    digest: str,
    n: int,
    rounds: int,
    metrics: Callable[[str], Any],
) -> dict[str, Any]:
    """ghz and the Go client against the in-memory service (and ghz against the no-op
    servicer), rounds interleaved with nothing else running, best kept."""
    out: dict[str, Any] = {}
    ghz, bench = tool("ghz"), tool("descriptor-bench")
    if not ghz:
        say("ghz not in .tools/bin (./dev bench installs it): its rows are skipped")
    if not bench:
        say("descriptor-bench not in .tools/bin (built from registry-go/): the Go client row is skipped")
    best: dict[str, float] = {}
    for r in range(rounds):
        for name, srv in servers.items():
            if name not in ("noop", "inmemory"):
                continue
            runs: list[tuple[str, Callable[[], tuple[float, int]]]] = []
            if ghz:
                runs.append((f"ghz_{name}", lambda s=srv: (ghz_stat(ghz, s.target, digest, n), n)))  # type: ignore[misc]
            if bench and name == "inmemory":
                runs.append(("goclient_inmemory", lambda s=srv: go_client_stat(bench, s.target, digest, n)))  # type: ignore[misc]
            for key, fn in runs:
                before = metrics(srv.target) if name != "noop" else None
                rps, calls = fn()
                if before is not None:
                    hits = metrics(srv.target).hits - before.hits
                    if hits != calls:
                        raise RuntimeError(f"{key}: {hits} cache hits for {calls} Stat calls")
                best[key] = max(best.get(key, 0.0), rps)
                say(f"round {r + 1}: Stat {key}: {rps:.0f}/s")
    out.update(best)
    return out


# -- registry HEADs ------------------------------------------------------------------------


class Registry:
    """A distribution registry process on a free loopback port, pinned to CPU 0."""

    def __init__(self, binary: str, workdir: Path, root: Path, port: int, extra: Mapping[str, Any]) -> None:
        self.url = f"http://127.0.0.1:{port}"
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "error", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(root)},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": f"127.0.0.1:{port}", "secret": "bench-secret"},
        }
        for key, value in extra.items():
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key] = {**config[key], **value}
            else:
                config[key] = value
        path = workdir / f"registry-{port}.yml"
        path.write_text(yaml.safe_dump(config))
        self.log = (workdir / f"registry-{port}.log").open("wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        self.proc = subprocess.Popen(
            pinned([binary, "serve", str(path)], "0"), stdout=self.log, stderr=subprocess.STDOUT, env=env
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(self.url + "/v2/", timeout=1)
                break
            except httpx.TransportError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"registry {binary} did not start: see {self.log.name}") from None
                time.sleep(0.05)

    def push(self, repo: str, content: bytes) -> str:
        import hashlib

        digest = "sha256:" + hashlib.sha256(content).hexdigest()
        with httpx.Client(base_url=self.url, timeout=10) as http:
            resp = http.post(f"/v2/{repo}/blobs/uploads/")
            resp.raise_for_status()
            location = resp.headers["Location"]
            resp = http.put(
                httpx.URL(location).copy_merge_params({"digest": digest}),
                content=content,
                headers={"Content-Type": "application/octet-stream"},
            )
            if resp.status_code != 201:
                raise RuntimeError(f"push failed: {resp.status_code} {resp.text}")
        return digest

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def head_rates(bench: str, url: str, n: int) -> tuple[dict[str, float], int]:
    """HEADs/s at each client count, and the HEADs sent (warm-ups included)."""
    rates: dict[str, float] = {}
    sent = 0
    for clients in CLIENTS:
        count = n if clients > 1 else max(n // 4, 500)
        res = run_json([bench, "head", "-url", url, "-c", str(clients), "-n", str(count)])
        if res["failed"]:
            raise RuntimeError(f"HEAD {url}: {res['failed']} of {count} not 200 ({res.get('statuses')})")
        rates[str(clients)] = float(res["rps"])
        sent += count + int(res["warmup_requests"])
    return rates, sent


def registry_heads(
    *,
    work: Path,
    redis_addr: str | None,
    start_service: Callable[[str, Path], ServerLike],
    metrics: Callable[[str], Any],
    free_port: Callable[[], int],
    n: int,
    rounds: int,
) -> dict[str, Any]:
    """HEAD rates of the v3.1.1 registry with each cache, at 1 and 16 clients."""
    plain, plugged, bench = tool("registry-v3.1.1"), tool("registry-descriptor"), tool("descriptor-bench")
    if not (plain and plugged and bench):
        say("registry-v3.1.1, registry-descriptor or descriptor-bench missing from .tools/bin: HEAD rows skipped")
        return {}
    content = b"a layer for the HEAD benchmark" * 100
    setups: list[str] = ["inmemory", "service", "service_unbatched"] + (["redis"] if redis_addr else [])
    if not redis_addr:
        say("no Redis: the registry's own redis cache row is skipped")
    results: dict[str, dict[str, float]] = {}
    for r in range(rounds):
        for setup in setups:
            base = work / f"heads-{setup}"
            base.mkdir(exist_ok=True)
            root = base / "storage"
            root.mkdir(exist_ok=True)
            service: ServerLike | None = None
            if setup == "inmemory":
                registry = Registry(
                    plain, base, root, free_port(), {"storage": {"cache": {"blobdescriptor": "inmemory"}}}
                )
            elif setup == "redis":
                extra = {"storage": {"cache": {"blobdescriptor": "redis"}}, "redis": {"addrs": [redis_addr]}}
                registry = Registry(plain, base, root, free_port(), extra)
            else:
                service = start_service(f"heads-{setup}", root)
                options = {"target": service.target, "batchstat": setup == "service"}
                middleware = {"repository": [{"name": "descriptorcache", "options": options}]}
                registry = Registry(plugged, base, root, free_port(), {"middleware": middleware})
            try:
                digest = registry.push("bench/layer", content)
                url = f"{registry.url}/v2/bench/layer/blobs/{digest}"
                httpx.head(url).raise_for_status()  # warm: the cache holds it from here on
                before = metrics(service.target) if service else None
                rates, sent = head_rates(bench, url, n)
                if service is not None and before is not None:
                    hits = metrics(service.target).hits - before.hits
                    if hits != sent:
                        raise RuntimeError(f"{setup}: {hits} service hits for {sent} registry HEADs")
            finally:
                registry.stop()
                if service is not None:
                    service.stop()
            kept = results.setdefault(setup, {})
            for clients, rps in rates.items():
                kept[clients] = max(kept.get(clients, 0.0), rps)
            say(
                f"round {r + 1}: registry HEAD, {setup}: "
                + ", ".join(f"{c} clients {v:.0f}/s" for c, v in rates.items())
            )
    return {"heads": results}


# -- the table ---------------------------------------------------------------------------------


def rows(res: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    out: list[tuple[str, str, str, str]] = []
    go = res.get("go", {})
    h2 = res.get("unary", {})
    if "ghz_inmemory" in go:
        base = h2.get("inmemory")
        ratio = f"{go['ghz_inmemory'] / base:.2f}x h2load" if base else ""
        out.append(("Stat hit, inmemory, ghz (1 conn, 16 concurrent)", f"{go['ghz_inmemory']:,.0f} calls/s", ratio, ""))
    if "ghz_noop" in go and h2.get("noop"):
        out.append(
            (
                "  ghz against the no-op servicer",
                f"{go['ghz_noop']:,.0f} calls/s",
                f"{go['ghz_noop'] / h2['noop']:.2f}x h2load",
                "",
            )
        )
    if "goclient_inmemory" in go:
        base = h2.get("inmemory")
        ratio = f"{go['goclient_inmemory'] / base:.2f}x h2load" if base else ""
        out.append(
            (
                "Stat hit, inmemory, Go client (16 goroutines, 1 conn)",
                f"{go['goclient_inmemory']:,.0f} calls/s",
                ratio,
                "(no goal)",
            )
        )
    heads = go.get("heads", {})
    for clients in ("1", "16"):
        redis = heads.get("redis", {}).get(clients)
        for setup, label in (
            ("inmemory", "own inmemory cache"),
            ("redis", "own redis cache"),
            ("service", "this service (batchstat, the default)"),
            ("service_unbatched", "this service, batchstat off (a Stat RPC per HEAD)"),
        ):
            rps = heads.get(setup, {}).get(clients)
            if rps is None:
                continue
            ratio, verdict = "", ""
            if setup == "redis":
                ratio = "baseline"
            elif redis:
                ratio = f"{rps / redis:.2f}x redis"
                if setup.startswith("service") and clients == "16":
                    verdict = "≥ 0.75x redis " + ("met" if rps / redis >= 0.75 else "NOT met")
            out.append(
                (f"Registry v3.1.1 blob HEAD, {clients} client(s), {label}", f"{rps:,.0f} req/s", ratio, verdict)
            )
    return out
