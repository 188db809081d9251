"""The files operators deploy from: the reference config and the Grafana dashboard."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import types
import typing
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from descriptor_client import Descriptor, DescriptorClient
from descriptor_server import config as cfg
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers.redis_servers import flush
from helpers.support import OCT, Layout, ServerProcess, base_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
REFERENCE = DEPLOY / "reference-config.yml"
DASHBOARD = DEPLOY / "grafana-dashboard.json"
CHART_ROOT = DEPLOY / "helm" / "descriptor-service"
ALTERNATIVE = "#| "


def key_paths(cls: type[Any], prefix: str = "") -> dict[str, Any]:
    """Every leaf key of a config dataclass, dotted (``[]`` for list items), with its default."""
    out: dict[str, Any] = {}
    hints = typing.get_type_hints(cls, include_extras=True)
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue  # filled in by loading, not a key
        hint = hints[f.name]
        if typing.get_origin(hint) is typing.Annotated:
            hint = typing.get_args(hint)[0]
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        path = f"{prefix}{f.name}"
        if typing.get_origin(hint) is list and dataclasses.is_dataclass(typing.get_args(hint)[0]):
            out.update(key_paths(typing.get_args(hint)[0], f"{path}[]."))
        elif dataclasses.is_dataclass(hint):
            out.update(key_paths(typing.cast(type[Any], hint), f"{path}."))
        else:
            out[path] = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    return out


def data_paths(data: Any, prefix: str = "") -> set[str]:
    paths: set[str] = set()
    if isinstance(data, dict):
        for key, value in data.items():
            sub = f"{prefix}{key}"
            if isinstance(value, dict) or (isinstance(value, list) and value and isinstance(value[0], dict)):
                paths |= data_paths(value, f"{sub}.") if isinstance(value, dict) else data_paths(value[0], f"{sub}[].")
            paths.add(sub)
    return paths


def uncommented() -> dict[str, Any]:
    """The reference config with every ``#| `` alternative switched on."""
    text = "\n".join(line.replace(ALTERNATIVE, "", 1) for line in REFERENCE.read_text().splitlines())
    data: dict[str, Any] = yaml.safe_load(text)
    return data


def test_reference_config_loads_as_is() -> None:
    config = cfg.load(str(REFERENCE), environ={})
    assert config == cfg.Config(storage=cfg.StorageConfig(filesystem=cfg.FilesystemConfig()))


def test_reference_config_documents_every_key() -> None:
    documented = data_paths(uncommented())
    missing = sorted(set(key_paths(cfg.Config)) - documented)
    assert not missing, f"keys of the config dataclasses missing from {REFERENCE.name}: {missing}"


def test_reference_config_shows_the_defaults() -> None:
    data = uncommented()
    defaults = key_paths(cfg.Config)
    examples = {"storage.registry.url", "storage.descriptorservice.target", "storage.s3.bucket"}
    examples |= {f"auth.token.{key}" for key in ("realm", "service", "issuer", "rootcertbundle")}
    for path, default in defaults.items():
        if path in examples or path.startswith("auth.tokens[]"):
            continue
        node: Any = data
        for part in path.split("."):
            node = node[part]
        if isinstance(default, float):
            node = cfg.parse_duration(node, path)
        assert node == default, f"{path}: reference shows {node!r}, default is {default!r}"


@pytest.mark.parametrize("backend", cfg.BACKENDS)
def test_each_alternative_backend_is_valid(backend: str) -> None:
    data = uncommented()
    data["storage"] = {k: v for k, v in data["storage"].items() if k not in cfg.BACKENDS or k == backend}
    config = cfg.from_dict(data)
    assert config.storage.backend == backend
    assert config.auth.tokens[0].scope == "read"


#: A metric selector in a PromQL expression: ``name{``.
SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\{")


def scraped_names(server: Any) -> set[str]:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    m = re.search(r"metrics endpoint at (http://\S+)", server.output)
    assert m, server.output
    with urllib.request.urlopen(m.group(1), timeout=10) as resp:
        text = resp.read().decode()
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.fixture(scope="module")
def served_names(tmp_path_factory: pytest.TempPathFactory, redis_standalone: Any) -> set[str]:
    """Every sample name in the scrape of real servers (in-memory, Redis with its near cache)
    that served calls."""
    tmp_path = tmp_path_factory.mktemp("scrape")
    flush(redis_standalone)
    layout = Layout(tmp_path / "registry")
    blob = layout.push("team/app", b"a layer for the dashboard")
    names: set[str] = set()
    for cache in ("inmemory", "redis"):
        config = base_config(layout.root, cache=cache)
        config["http"] = {"debug": {"addr": "127.0.0.1:0", "prometheus": {"enabled": True}}}
        config["redis"] = {"addrs": [redis_standalone.addr]}
        (tmp_path / cache).mkdir()
        server = ServerProcess(config, tmp_path / cache).start()
        try:
            with DescriptorClient(server.target) as client:
                client.stat(blob)
                client.stat(blob)
                client.set_descriptor(blob, Descriptor(OCT, blob, 25), "team/app")
                client.batch_stat([blob])
            with grpc.insecure_channel(server.target) as channel:
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            names |= scraped_names(server)
        finally:
            server.stop()
    return names


@pytest.mark.redis
def test_every_dashboard_query_against_a_real_scrape(served_names: set[str]) -> None:
    """Each metric every panel queries is in the scrape of real servers that served calls."""
    names = served_names
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 20
    for expr in exprs:
        used = set(SELECTOR.findall(expr))
        assert used, f"no metric selector in {expr!r}"
        assert used <= names, (expr, sorted(used - names))
    # The variables list this service's jobs and instances only: distribution registries
    # export registry_storage_cache_* too, and "All" must not mix them into these panels.
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            assert re.match(r"label_values\(descriptor_build_info\b", variable["definition"]), variable["name"]
            assert variable["query"]["query"] == variable["definition"]
    assert "descriptor_build_info" in names
    queried = {name for expr in exprs for name in SELECTOR.findall(expr)}
    for family in (
        "registry_storage_cache_requests_total",
        "registry_storage_cache_hits_total",
        "registry_storage_cache_misses_total",
        "registry_storage_cache_errors_total",
        "registry_storage_cache_redis_seconds_bucket",
        "grpc_server_handled_total",
        "grpc_server_handling_seconds_bucket",
        "grpc_server_started_total",
        "registry_storage_cache_entries",
        "registry_storage_cache_evictions_total",
        "registry_storage_backend_request_duration_seconds_bucket",
        "registry_storage_cache_redis_up",
        "process_resident_memory_bytes",
    ):
        assert family in queried, f"the dashboard has no panel for {family}"


@pytest.mark.redis
def test_every_alert_reads_metrics_the_server_exports(served_names: set[str]) -> None:
    """The Helm chart's PrometheusRule reads only metrics a real scrape has (``up`` is Prometheus' own)."""
    helm = CHART_ROOT.parent.parent.parent / ".tools" / "bin" / "helm"
    binary = str(helm) if helm.is_file() else shutil.which("helm")
    if binary is None:
        pytest.skip("helm not installed (./dev test builds it into .tools/bin)")
    done = subprocess.run(
        [binary, "template", "rel", str(CHART_ROOT), "--set", "prometheusRule.enabled=true"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (rule,) = [d for d in yaml.safe_load_all(done.stdout) if d and d["kind"] == "PrometheusRule"]
    exprs = [r["expr"] for group in rule["spec"]["groups"] for r in group["rules"]]
    assert len(exprs) >= 6
    used = {name for expr in exprs for name in SELECTOR.findall(expr)} - {"up"}
    assert "descriptor_cache_near_live" in used
    assert used <= served_names, sorted(used - served_names)
