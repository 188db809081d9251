"""The Helm chart (deploy/helm/descriptor-service): ``helm lint``, and the objects ``helm template`` renders.

helm is built by ./dev at a pinned version into .tools/bin (``go install``). The rendered
server config is validated by the server's own loader, so the chart cannot ship a config
the server refuses.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from descriptor_server import config as cfg
from helpers.support import run_server_command

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "descriptor-service"
SERVICE = "descriptor.v1.BlobDescriptorService"
DOCS = ROOT / "docs" / "deploy.md"


def helm_binary() -> str:
    local = ROOT / ".tools" / "bin" / "helm"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which("helm")
    if found is None:
        pytest.skip("helm not installed (./dev test builds it into .tools/bin)")
    return found


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm_binary(), *args], capture_output=True, text=True, timeout=120, check=False)


def render(values: dict[str, Any] | None = None, tmp_path: Path | None = None) -> dict[str, list[dict[str, Any]]]:
    """``helm template`` with ``values`` (a values file), objects grouped by kind."""
    # No --kube-version: helm assumes its own client's Kubernetes version, as a released helm
    # does (./dev builds it with the same ldflags), and the chart needs 1.27 or later.
    args = ["template", "rel", str(CHART), "--namespace", "registry"]
    if values is not None:
        assert tmp_path is not None
        path = tmp_path / "values.yml"
        path.write_text(yaml.safe_dump(values))
        args += ["-f", str(path)]
    done = helm(*args)
    assert done.returncode == 0, done.stderr
    objects: dict[str, list[dict[str, Any]]] = {}
    for doc in yaml.safe_load_all(done.stdout):
        if doc:
            objects.setdefault(doc["kind"], []).append(doc)
    return objects


def template_failure(values: dict[str, Any], tmp_path: Path) -> str:
    """``helm template`` with ``values`` that must be refused: its error output."""
    path = tmp_path / "refused.yml"
    path.write_text(yaml.safe_dump(values))
    done = helm("template", "rel", str(CHART), "--namespace", "registry", "-f", str(path))
    assert done.returncode != 0, f"rendered: {values}"
    return done.stderr


def one(objects: dict[str, list[dict[str, Any]]], kind: str) -> dict[str, Any]:
    (obj,) = objects[kind]
    return obj


def pod_spec(objects: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    spec: dict[str, Any] = one(objects, "Deployment")["spec"]["template"]["spec"]
    return spec


def container(objects: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    (c,) = pod_spec(objects)["containers"]
    return c  # type: ignore[no-any-return]


def server_config(objects: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(one(objects, "ConfigMap")["data"]["config.yml"])
    return data


def port_of(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


def mounts(objects: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    return {m["mountPath"]: m for m in container(objects)["volumeMounts"]}


def volumes(objects: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in pod_spec(objects)["volumes"]}


# -- lint and metadata --------------------------------------------------------------------


def test_helm_lint() -> None:
    done = helm("lint", "--strict", str(CHART))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in done.stdout


def test_chart_version_follows_the_project() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    with (ROOT / "pyproject.toml").open("rb") as f:
        version = tomllib.load(f)["project"]["version"]
    assert chart["appVersion"] == version
    assert chart["version"] == version


# -- the default render ----------------------------------------------------------------


def test_default_render_has_the_expected_objects() -> None:
    objects = render()
    assert set(objects) == {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "ServiceAccount"}


def test_native_grpc_probes_on_the_health_port() -> None:
    objects = render()
    config = server_config(objects)
    health = port_of(config["grpc"]["healthaddr"])
    c = container(objects)
    assert {p["name"]: p["containerPort"] for p in c["ports"]}["health"] == health
    assert c["livenessProbe"]["grpc"] == {"port": health}  # the process ("")
    assert c["startupProbe"]["grpc"] == {"port": health}
    assert c["readinessProbe"]["grpc"] == {"port": health, "service": SERVICE}  # the backend probe
    assert health != port_of(config["grpc"]["addr"])


def test_grace_period_above_the_drain(tmp_path: Path) -> None:
    for values in ({}, {"drainSeconds": 120}, {"drainSeconds": 5, "preStopSleepSeconds": 5}):
        objects = render(values, tmp_path)
        drain = cfg.parse_duration(server_config(objects)["grpc"]["drain"], "grpc.drain")
        assert drain == values.get("drainSeconds", 30)
        grace = pod_spec(objects)["terminationGracePeriodSeconds"]
        assert grace > drain + values.get("preStopSleepSeconds", 0), values
        if values.get("preStopSleepSeconds"):
            assert container(objects)["lifecycle"]["preStop"]["sleep"]["seconds"] == 5


def test_non_root_with_a_read_only_root_filesystem() -> None:
    objects = render()
    pod = pod_spec(objects)["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert isinstance(pod["runAsUser"], int)
    assert pod["runAsUser"] > 0
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container(objects)["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    # The one writable place is an emptyDir at /tmp; the config is read-only.
    by_path = mounts(objects)
    assert volumes(objects)[by_path["/tmp"]["name"]]["emptyDir"] is not None
    assert not by_path["/tmp"].get("readOnly", False)
    assert by_path["/etc/descriptor/config.yml"]["readOnly"] is True
    assert pod_spec(objects)["automountServiceAccountToken"] is False


def test_config_comes_from_the_configmap_and_the_server_accepts_it(tmp_path: Path) -> None:
    objects = render()
    c = container(objects)
    assert c["args"] == ["--config", "/etc/descriptor/config.yml"]
    mount = mounts(objects)["/etc/descriptor/config.yml"]
    configmap = one(objects, "ConfigMap")
    assert volumes(objects)[mount["name"]]["configMap"]["name"] == configmap["metadata"]["name"]
    assert mount["subPath"] in configmap["data"]
    annotations = one(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert len(annotations["checksum/config"]) == 64  # a config change rolls the pods

    path = tmp_path / "config.yml"
    path.write_text(configmap["data"]["config.yml"])
    loaded = cfg.load(str(path), environ={})
    assert loaded.grpc.addr == "0.0.0.0:5051"
    assert loaded.grpc.healthaddr == "0.0.0.0:5053"
    assert loaded.http.debug.addr == "0.0.0.0:5052"
    assert loaded.storage.filesystem is not None
    # The storage root is mounted where the config says, read-only while deletion is off.
    registry = mounts(objects)[loaded.storage.filesystem.rootdirectory]
    assert registry["readOnly"] is True
    done = run_server_command(["--check-config", str(path)], cwd=tmp_path)
    assert done.returncode == 0, done.stderr


def test_registry_storage_claim_and_deletion(tmp_path: Path) -> None:
    values = {
        "replicaCount": 1,  # the in-memory cache with deletion: one replica only
        "registryStorage": {"existingClaim": "registry-data"},
        "config": {"storage": {"delete": {"enabled": True}}},
    }
    objects = render(values, tmp_path)
    mount = mounts(objects)["/var/lib/registry"]
    assert mount["readOnly"] is False  # Clear deletes links and blobs
    assert volumes(objects)[mount["name"]]["persistentVolumeClaim"] == {"claimName": "registry-data", "readOnly": False}
    # Another backend: no registry volume at all.
    objects = render({"config": {"storage": {"filesystem": None, "s3": {"bucket": "b"}}}}, tmp_path)
    assert "/var/lib/registry" not in mounts(objects)
    assert "registry" not in volumes(objects)
    assert "filesystem" not in server_config(objects)["storage"]


def test_service_ports() -> None:
    objects = render()
    service = one(objects, "Service")
    named = {p["name"]: p["containerPort"] for p in container(objects)["ports"]}
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert set(ports) == {"grpc", "metrics"}  # health stays inside the pod, for the kubelet
    assert ports["grpc"]["port"] == named["grpc"] == 5051
    assert ports["grpc"]["appProtocol"] == "grpc"
    assert ports["metrics"]["port"] == named["metrics"] == 5052
    for port in ports.values():
        assert port["targetPort"] in named
    labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()


def test_pod_disruption_budget_never_blocks_a_drain(tmp_path: Path) -> None:
    objects = render()
    pdb = one(objects, "PodDisruptionBudget")
    labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": pdb["spec"]["selector"]}
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # One replica: the budget still lets kubectl drain evict it.
    pdb = one(render({"replicaCount": 1}, tmp_path), "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    # minAvailable wins when set; at or above the replicas it could never be met.
    pdb = one(render({"replicaCount": 3, "podDisruptionBudget": {"minAvailable": 2}}, tmp_path), "PodDisruptionBudget")
    assert pdb["spec"] == {"minAvailable": 2, "selector": pdb["spec"]["selector"]}
    for replicas in (1, 2):
        done = template_failure({"replicaCount": replicas, "podDisruptionBudget": {"minAvailable": replicas}}, tmp_path)
        assert f"podDisruptionBudget.minAvailable={replicas} with replicaCount={replicas}" in done
        assert "kubectl drain would block" in done
    assert "PodDisruptionBudget" not in render({"podDisruptionBudget": {"enabled": False}}, tmp_path)


def test_service_monitor_on_and_off(tmp_path: Path) -> None:
    assert "ServiceMonitor" not in render()
    objects = render({"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}, tmp_path)
    monitor = one(objects, "ServiceMonitor")
    service = one(objects, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == server_config(objects)["http"]["debug"]["prometheus"]["path"]
    # Without a metrics port there is nothing to scrape, and the server must not expect one.
    done = helm(
        "template", "rel", str(CHART), "--set", "serviceMonitor.enabled=true",
        "--set", "ports.metrics=null",
    )  # fmt: skip
    assert done.returncode != 0
    assert "serviceMonitor.enabled needs ports.metrics" in done.stderr
    objects = render({"ports": {"metrics": None}}, tmp_path)
    assert server_config(objects)["http"]["debug"] == {"addr": "", "prometheus": {"enabled": False, "path": "/metrics"}}
    assert {p["name"] for p in one(objects, "Service")["spec"]["ports"]} == {"grpc"}


# -- secrets through the ...file keys -------------------------------------------------------

SECRET_FILES = [
    {"configKey": "redis.passwordfile", "secretKey": "redis-password"},
    {"configKey": "storage.s3.accesskeyfile", "secretKey": "s3-access-key"},
    {"configKey": "storage.s3.secretkeyfile", "secretKey": "s3-secret-key"},
    {"configKey": "storage.registry.passwordfile", "secretKey": "registry-password"},
    {"configKey": "storage.descriptorservice.tokenfile", "secretKey": "upstream-token"},
]


def lookup(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = node[part]
    return node


def test_secrets_reach_the_server_as_files(tmp_path: Path) -> None:
    data = {f["secretKey"]: f"value of {f['secretKey']}" for f in SECRET_FILES}
    objects = render({"secretFiles": SECRET_FILES, "secret": {"data": data}}, tmp_path)
    secret = one(objects, "Secret")
    assert {k: base64.b64decode(v).decode() for k, v in secret["data"].items()} == data
    config = server_config(objects)
    mount = mounts(objects)["/etc/descriptor/secrets"]
    assert mount["readOnly"] is True
    volume = volumes(objects)[mount["name"]]["secret"]
    assert volume["secretName"] == secret["metadata"]["name"]
    assert volume["defaultMode"] == 0o440
    items = {item["key"]: item["path"] for item in volume["items"]}
    for entry in SECRET_FILES:
        # The config key names the file the Secret key is mounted as.
        assert lookup(config, entry["configKey"]) == f"/etc/descriptor/secrets/{items[entry['secretKey']]}"
    assert "checksum/secret" in one(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert "value of" not in one(objects, "ConfigMap")["data"]["config.yml"]  # no secret in the ConfigMap


def test_an_existing_secret_is_used_as_is(tmp_path: Path) -> None:
    objects = render({"secretFiles": SECRET_FILES[:1], "secret": {"existingSecret": "my-secrets"}}, tmp_path)
    assert "Secret" not in objects
    mount = mounts(objects)["/etc/descriptor/secrets"]
    assert volumes(objects)[mount["name"]]["secret"]["secretName"] == "my-secrets"


def test_a_secret_file_without_a_value_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "values.yml"
    path.write_text(yaml.safe_dump({"secretFiles": SECRET_FILES[:1]}))
    done = helm("template", "rel", str(CHART), "-f", str(path))
    assert done.returncode != 0
    assert "redis-password (for redis.passwordfile) has no value" in done.stderr


def test_tls_from_a_secret_keeps_the_probes_on_plaintext_health(tmp_path: Path) -> None:
    objects = render({"tls": {"secretName": "descriptor-tls", "clientCA": True}}, tmp_path)
    tls = server_config(objects)["grpc"]["tls"]
    assert tls == {
        "certificate": "/etc/descriptor/tls/tls.crt",
        "key": "/etc/descriptor/tls/tls.key",
        "clientcas": ["/etc/descriptor/tls/ca.crt"],
    }
    mount = mounts(objects)["/etc/descriptor/tls"]
    assert volumes(objects)[mount["name"]]["secret"]["secretName"] == "descriptor-tls"
    health = port_of(server_config(objects)["grpc"]["healthaddr"])
    assert container(objects)["readinessProbe"]["grpc"]["port"] == health


# -- values the chart refuses ---------------------------------------------------------------

IN_MEMORY_WITH_DELETION = {
    "config": {"storage": {"cache": {"blobdescriptor": "inmemory"}, "delete": {"enabled": True}}},
}


def test_replicas_with_the_in_memory_cache_and_deletion_are_refused(tmp_path: Path) -> None:
    """A Clear reaches one pod's in-memory cache only: the other pods would answer the deleted blob for good."""
    for replicas in (2, 5):
        err = template_failure({"replicaCount": replicas, **IN_MEMORY_WITH_DELETION}, tmp_path)
        assert f"replicaCount={replicas} with config.storage.cache.blobdescriptor=inmemory" in err
        assert "config.storage.delete.enabled=true" in err
        assert "config.storage.cache.blobdescriptor=redis" in err  # the way out
    # The chart's default cache is the in-memory one: deletion alone at 2 replicas is refused too.
    err = template_failure({"config": {"storage": {"delete": {"enabled": True}}}}, tmp_path)
    assert "replicaCount=2 with config.storage.cache.blobdescriptor=inmemory" in err
    # Each way out renders: one replica, Redis shared by the pods, no cache, deletion off.
    single = one(render({"replicaCount": 1, **IN_MEMORY_WITH_DELETION}, tmp_path), "Deployment")["spec"]
    assert single["replicas"] == 1
    # ... and that one pod is replaced, never doubled: a rolling update would run the old and
    # the new pod side by side, each with its own cache, and a Clear would reach one of them.
    assert single["strategy"] == {"type": "Recreate"}
    for cache in ("redis", "none"):
        values = {"config": {"storage": {"cache": {"blobdescriptor": cache}, "delete": {"enabled": True}}}}
        spec = one(render(values, tmp_path), "Deployment")["spec"]
        assert spec["replicas"] == 2
        assert "strategy" not in spec  # a shared or no cache rolls as usual
    spec = one(render({"replicaCount": 4}, tmp_path), "Deployment")["spec"]
    assert spec["replicas"] == 4
    assert "strategy" not in spec  # deletion off: a stale pod cannot outlive a Clear


def test_the_schema_refuses_wrong_values(tmp_path: Path) -> None:
    assert json.loads((CHART / "values.schema.json").read_text())["additionalProperties"] is False
    cases = [
        ({"config": {"storage": {"cache": {"blobdescriptor": "memcached"}}}}, "/config/storage/cache/blobdescriptor"),
        ({"replicaCount": "two"}, "/replicaCount"),
        ({"ports": {"grpc": 70000}}, "/ports/grpc"),
        ({"drainSeconds": "30s"}, "/drainSeconds"),
        ({"podAntiAffinityPreset": "always"}, "/podAntiAffinityPreset"),
        ({"replicas": 3}, "replicas"),  # a misspelt value is not silently ignored
        ({"secretFiles": [{"configKey": "redis.passwordfile"}]}, "secretKey"),
    ]
    for values, where in cases:
        err = template_failure(values, tmp_path)
        assert "values don't meet the specifications of the schema" in err, err
        assert where in err, (values, err)


def test_an_unknown_config_key_fails_the_pods_start_with_the_servers_message(tmp_path: Path) -> None:
    """The schema checks only the cache kind of ``config``; the server checks the rest at start,
    exactly as it does with ``--check-config`` on the rendered ConfigMap (exit 2: no restart loop
    can fix it, and the pod's log names the key)."""
    objects = render({"config": {"storage": {"cache": {"blobdescriptorsise": 5}}}}, tmp_path)
    path = tmp_path / "config.yml"
    path.write_text(one(objects, "ConfigMap")["data"]["config.yml"])
    done = run_server_command(["--check-config", str(path)], cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "storage.cache.blobdescriptorsise" in done.stderr
    # The same render with the key spelt right is accepted.
    objects = render({"config": {"storage": {"cache": {"blobdescriptorsize": 5}}}}, tmp_path)
    path.write_text(one(objects, "ConfigMap")["data"]["config.yml"])
    done = run_server_command(["--check-config", str(path)], cwd=tmp_path)
    assert done.returncode == 0, done.stderr


# -- volumes and scheduling -------------------------------------------------------------------


def test_volume_ownership_is_changed_only_on_a_mismatch() -> None:
    pod = pod_spec(render())["securityContext"]
    assert pod["fsGroup"] == pod["runAsGroup"]
    assert pod["fsGroupChangePolicy"] == "OnRootMismatch"  # no walk of the registry's files at every start


def test_the_claim_is_read_only_at_its_source_while_deletion_is_off(tmp_path: Path) -> None:
    claim = {"registryStorage": {"existingClaim": "registry-data"}}
    objects = render({**claim, "replicaCount": 1}, tmp_path)
    mount = mounts(objects)["/var/lib/registry"]
    assert mount["readOnly"] is True
    assert volumes(objects)[mount["name"]]["persistentVolumeClaim"] == {"claimName": "registry-data", "readOnly": True}
    objects = render({**claim, "replicaCount": 1, **IN_MEMORY_WITH_DELETION}, tmp_path)
    mount = mounts(objects)["/var/lib/registry"]
    assert mount["readOnly"] is False
    assert volumes(objects)[mount["name"]]["persistentVolumeClaim"]["readOnly"] is False


def test_replicas_spread_over_nodes(tmp_path: Path) -> None:
    objects = render()
    selector = one(objects, "Deployment")["spec"]["selector"]["matchLabels"]
    (soft,) = pod_spec(objects)["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert soft["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert soft["podAffinityTerm"]["labelSelector"]["matchLabels"] == selector
    hard = pod_spec(render({"podAntiAffinityPreset": "hard"}, tmp_path))["affinity"]["podAntiAffinity"]
    assert hard["requiredDuringSchedulingIgnoredDuringExecution"][0]["labelSelector"]["matchLabels"] == selector
    assert "affinity" not in pod_spec(render({"podAntiAffinityPreset": ""}, tmp_path))
    own = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}}
    assert pod_spec(render({"affinity": own}, tmp_path))["affinity"] == own  # yours replaces the preset
    zone = {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway"}
    (spread,) = pod_spec(render({"topologySpreadConstraints": [zone]}, tmp_path))["topologySpreadConstraints"]
    assert spread == {**zone, "labelSelector": {"matchLabels": selector}}


# -- alerts ---------------------------------------------------------------------------------

ALERTS = {
    "DescriptorServiceDown",
    "DescriptorCacheDown",
    "DescriptorBackendErrors",
    "DescriptorErrorRatio",
    "DescriptorCallsShed",
    "DescriptorNearCacheNotLive",
}


def prometheus_rule(tmp_path: Path) -> dict[str, Any]:
    assert "PrometheusRule" not in render()
    return one(render({"prometheusRule": {"enabled": True, "labels": {"release": "prom"}}}, tmp_path), "PrometheusRule")


def rules_of(rule: dict[str, Any]) -> list[dict[str, Any]]:
    (group,) = rule["spec"]["groups"]
    rules: list[dict[str, Any]] = group["rules"]
    return rules


def test_alerts_link_to_their_runbook_section(tmp_path: Path) -> None:
    rule = prometheus_rule(tmp_path)
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "prom"
    rules = rules_of(rule)
    assert {r["alert"] for r in rules} == ALERTS
    # GitHub's anchors of the docs' headings: lower case, spaces to dashes, punctuation dropped.
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in DOCS.read_text().splitlines()
        if line.startswith("#")
    }
    for r in rules:
        url = r["annotations"]["runbook_url"]
        assert url.endswith(f"docs/deploy.md#{r['alert'].lower()}"), url
        assert r["alert"].lower() in anchors, f"docs/deploy.md has no section {r['alert']}"
        assert r["labels"]["severity"] in {"critical", "warning"}
    done = template_failure({"prometheusRule": {"enabled": True}, "ports": {"metrics": None}}, tmp_path)
    assert "prometheusRule.enabled needs ports.metrics" in done


JOB = "rel-descriptor-service"  # the Service's name, the job a ServiceMonitor scrapes


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool not installed (./dev test installs Debian's prometheus)")
    return found


def test_promtool_accepts_the_rules_and_they_fire(tmp_path: Path) -> None:
    """``promtool check rules`` parses every expression; ``promtool test rules`` feeds each alert
    the series of its failure and checks it fires (and stays quiet on a healthy service)."""
    rule = prometheus_rule(tmp_path)
    annotations = {r["alert"]: r["annotations"] for r in rules_of(rule)}
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump(rule["spec"]))
    done = subprocess.run([promtool(), "check", "rules", str(rules)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in done.stdout

    job = f'namespace="registry", job="{JOB}", pod="p0"'
    svc = 'grpc_service="descriptor.v1.BlobDescriptorService", grpc_method="Stat", grpc_type="unary"'
    handled = f"grpc_server_handled_total{{{job}, {svc}, grpc_code="
    backend = f'registry_storage_backend_request_duration_seconds_count{{{job}, backend="filesystem", operation="stat"'

    def fires(alert: str, at: str, labels: dict[str, str]) -> dict[str, Any]:
        """``alert`` fires at ``at`` with ``labels``, or (no labels) does not fire."""
        expected = {k: v.replace("{{ $labels.pod }}", "p0") for k, v in annotations[alert].items()}
        exp = [{"exp_labels": labels, "exp_annotations": expected}] if labels else []
        return {"eval_time": at, "alertname": alert, "exp_alerts": exp}

    at = {"namespace": "registry", "pod": "p0"}
    cases = [
        # A healthy service: nothing fires.
        (
            [(f'up{{{job}, instance="p0:5052"}}', "1x30"), (f'{handled}"OK"}}', "0+100x30")],
            [fires(alert, "25m", {}) for alert in sorted(ALERTS)],
        ),
        (
            [(f'up{{{job}, instance="p0:5052"}}', "0x30")],
            [
                fires(
                    "DescriptorServiceDown", "10m", {**at, "job": JOB, "instance": "p0:5052", "severity": "critical"}
                ),
            ],
        ),
        (
            [(f"registry_storage_cache_redis_up{{{job}}}", "0x30")],
            [
                fires("DescriptorCacheDown", "5m", {**at, "severity": "critical"}),
            ],
        ),
        (
            [(f"descriptor_cache_near_live{{{job}}}", "0x30")],
            [
                fires("DescriptorNearCacheNotLive", "15m", {**at, "severity": "warning"}),
            ],
        ),
        (
            [(f'{backend}, outcome="error"}}', "0+90x30"), (f'{backend}, outcome="ok"}}', "0+10x30")],
            [
                fires("DescriptorBackendErrors", "15m", {**at, "backend": "filesystem", "severity": "critical"}),
            ],
        ),
        (
            [(f'{handled}"OK"}}', "0+90x30"), (f'{handled}"UNAVAILABLE"}}', "0+10x30")],
            [
                fires("DescriptorErrorRatio", "15m", {"namespace": "registry", "severity": "warning"}),
                fires("DescriptorCallsShed", "15m", {}),
            ],
        ),
        (
            [(f'{handled}"OK"}}', "0+90x30"), (f'{handled}"RESOURCE_EXHAUSTED"}}', "0+10x30")],
            [
                fires("DescriptorCallsShed", "15m", {"namespace": "registry", "severity": "warning"}),
                fires("DescriptorErrorRatio", "15m", {}),
            ],
        ),
    ]
    tests = [
        {"interval": "1m", "input_series": [{"series": s, "values": v} for s, v in series], "alert_rule_test": alerts}
        for series, alerts in cases
    ]
    unit = tmp_path / "rules_test.yml"
    unit.write_text(yaml.safe_dump({"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": tests}))
    done = subprocess.run([promtool(), "test", "rules", str(unit)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
