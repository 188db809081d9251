"""The Helm chart (deploy/helm/descriptor-service): ``helm lint``, and the objects ``helm template`` renders.

helm is built by ./dev at a pinned version into .tools/bin (``go install``). The rendered
server config is validated by the server's own loader, so the chart cannot ship a config
the server refuses.
"""

from __future__ import annotations

import base64
import os
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
KUBE_VERSION = "1.30.0"  # helm built with go install defaults to v1.20, below the chart's kubeVersion


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
    args = ["template", "rel", str(CHART), "--namespace", "registry", "--kube-version", KUBE_VERSION]
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
    done = helm("lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION)
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
        "registryStorage": {"existingClaim": "registry-data"},
        "config": {"storage": {"delete": {"enabled": True}}},
    }
    objects = render(values, tmp_path)
    mount = mounts(objects)["/var/lib/registry"]
    assert mount["readOnly"] is False  # Clear deletes links and blobs
    assert volumes(objects)[mount["name"]]["persistentVolumeClaim"] == {"claimName": "registry-data"}
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


def test_pod_disruption_budget(tmp_path: Path) -> None:
    objects = render()
    pdb = one(objects, "PodDisruptionBudget")
    labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    pdb = one(render({"podDisruptionBudget": {"maxUnavailable": 1}}, tmp_path), "PodDisruptionBudget")
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": pdb["spec"]["selector"]}
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
        "template", "rel", str(CHART), "--kube-version", KUBE_VERSION, "--set", "serviceMonitor.enabled=true",
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
    done = helm("template", "rel", str(CHART), "--kube-version", KUBE_VERSION, "-f", str(path))
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
