"""Configuration: YAML file, DESCRIPTOR_* overrides, durations, and errors naming the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from descriptor_server.config import Config, ConfigError, from_dict, load, parse_duration, to_dict


def write(tmp_path: Path, data: Any) -> str:
    path = tmp_path / "config.yml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return str(path)


def test_defaults_are_the_embedded_default() -> None:
    config = load(None, {})
    assert config == Config()
    assert config.storage.backend == "filesystem"
    assert config.storage.filesystem is None  # build_backend serves ./data
    assert config.storage.cache.blobdescriptor == "inmemory"
    assert config.storage.cache.blobdescriptorsize == 10000
    assert config.storage.delete.enabled is False
    assert config.grpc.addr == "127.0.0.1:5051"
    assert config.grpc.maxbatch == 1000


def test_contract_example_loads(tmp_path: Path) -> None:
    text = """
storage:
  filesystem: {rootdirectory: /var/lib/registry}
  cache: {blobdescriptor: redis, blobdescriptorsize: 10000}
  delete: {enabled: true}
redis: {addrs: ["127.0.0.1:6379"], db: 0, password: "", dialtimeout: 1s}
grpc:
  addr: "127.0.0.1:5051"
  maxbatch: 1000
  tls: {certificate: server.crt, key: server.key, clientcas: [ca.crt]}
auth: {tokens: [{name: gc, scope: write, sha256: "%s"}]}
http: {debug: {addr: "127.0.0.1:5052", prometheus: {enabled: true, path: /metrics}}}
log: {level: info, formatter: text}
""" % ("ab" * 32)
    config = load(write(tmp_path, text), {})
    assert config.storage.filesystem is not None
    assert config.storage.filesystem.rootdirectory == "/var/lib/registry"
    assert config.storage.cache.blobdescriptor == "redis"
    assert config.storage.delete.enabled is True
    assert config.redis.addrs == ["127.0.0.1:6379"]
    assert config.redis.dialtimeout == 1.0
    assert config.grpc.tls.clientcas == ["ca.crt"]
    assert config.auth.tokens[0].scope == "write"
    assert config.http.debug.prometheus.enabled is True


def test_empty_file_is_the_default(tmp_path: Path) -> None:
    assert load(write(tmp_path, ""), {}) == Config()


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, {"storage": {"cache": {"blobdescriptor": "inmemory"}}})
    config = load(
        path,
        {
            "DESCRIPTOR_STORAGE_CACHE_BLOBDESCRIPTOR": "none",
            "DESCRIPTOR_REDIS_ADDRS": "[a:6379, b:6379]",
            "DESCRIPTOR_STORAGE_DELETE_ENABLED": "true",
            "DESCRIPTOR_GRPC_MAXBATCH": "7",
            "DESCRIPTOR_STORAGE_FILESYSTEM_ROOTDIRECTORY": "/srv/registry",
            "DESCRIPTOR_REDIS_DIALTIMEOUT": "250ms",
            # Not under an overridable section: ignored (the client's own variables).
            "DESCRIPTOR_TOKEN": "secret",
            "DESCRIPTOR_TARGET": "127.0.0.1:1",
            "OTHER_GRPC_ADDR": "x",
        },
    )
    assert config.storage.cache.blobdescriptor == "none"
    assert config.redis.addrs == ["a:6379", "b:6379"]
    assert config.storage.delete.enabled is True
    assert config.grpc.maxbatch == 7
    assert config.storage.filesystem is not None
    assert config.storage.filesystem.rootdirectory == "/srv/registry"
    assert config.redis.dialtimeout == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("environ", "key"),
    [
        ({"DESCRIPTOR_GRPC_BOGUS": "1"}, "grpc.bogus"),
        ({"DESCRIPTOR_STORAGE_CACHE_BLOBDESCRIPTOR": "memcached"}, "storage.cache.blobdescriptor"),
        ({"DESCRIPTOR_GRPC_MAXBATCH": "many"}, "grpc.maxbatch"),
        ({"DESCRIPTOR_GRPC_ADDR": "[unclosed"}, "grpc.addr"),
        ({"DESCRIPTOR_STORAGE__DELETE_ENABLED": "true"}, "storage..delete.enabled"),
        ({"DESCRIPTOR_HTTP_DEBUG_PROMETHEUS_ENABLED": "true"}, "http.debug.addr"),
    ],
)
def test_bad_environment_names_the_key(environ: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(None, environ)
    assert info.value.key == key
    assert key in str(info.value)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1.0), ("500ms", 0.5), ("1m30s", 90.0), ("1h", 3600.0), ("1.5s", 1.5), ("250us", 0.00025), (2, 2.0)],
)
def test_durations(text: Any, seconds: float) -> None:
    assert parse_duration(text, "k") == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1", "abc", "1x", "s", "-1s", "1s ms", True, [1]])
def test_bad_durations_name_the_key(text: Any) -> None:
    with pytest.raises(ConfigError) as info:
        from_dict({"redis": {"dialtimeout": text}})
    assert info.value.key == "redis.dialtimeout"


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"bogus": 1}, "bogus"),
        ({"storage": {"cache": {"bogus": 1}}}, "storage.cache.bogus"),
        ({"storage": {"filesystem": {"root": "/x"}}}, "storage.filesystem.root"),
        ({"storage": {"cache": {"blobdescriptor": "memcached"}}}, "storage.cache.blobdescriptor"),
        ({"storage": {"cache": {"blobdescriptorsize": -1}}}, "storage.cache.blobdescriptorsize"),
        ({"storage": {"cache": {"blobdescriptorsize": "big"}}}, "storage.cache.blobdescriptorsize"),
        ({"storage": {"delete": {"enabled": "yes please"}}}, "storage.delete.enabled"),
        ({"storage": {"cache": "inmemory"}}, "storage.cache"),
        ({"grpc": {"addr": "localhost"}}, "grpc.addr"),
        ({"grpc": {"addr": "127.0.0.1:99999"}}, "grpc.addr"),
        ({"grpc": {"addr": "127.0.0.1:port"}}, "grpc.addr"),
        ({"grpc": {"maxbatch": 0}}, "grpc.maxbatch"),
        ({"grpc": {"drain": "forever"}}, "grpc.drain"),
        ({"redis": {"addrs": ["nohost"]}, "storage": {"cache": {"blobdescriptor": "redis"}}}, "redis.addrs[0]"),
        ({"log": {"level": "loud"}}, "log.level"),
        ({"log": {"formatter": "xml"}}, "log.formatter"),
        ({"auth": {"tokens": [{"name": "a", "scope": "admin", "sha256": "a" * 64}]}}, "auth.tokens[0].scope"),
        ({"auth": {"tokens": [{"name": "a", "scope": "read", "sha256": "nothex"}]}}, "auth.tokens[0].sha256"),
        ({"storage": {"filesystem": {}, "s3": {"bucket": "b"}}}, "storage"),
    ],
)
def test_bad_values_name_the_key(data: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(data)
    assert info.value.key == key
    assert str(info.value).startswith(f"{key}: ")
    assert "\n" not in str(info.value)


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load(str(tmp_path / "missing.yml"), {})
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(write(tmp_path, "storage: [unclosed"), {})
    with pytest.raises(ConfigError, match="mapping"):
        load(write(tmp_path, "- a\n- b\n"), {})


def test_to_dict_masks_secrets_and_round_trips() -> None:
    config = from_dict(
        {
            "redis": {"password": "hunter2"},
            "storage": {"s3": {"bucket": "b", "accesskey": "AK", "secretkey": "SK"}},
            "auth": {"tokens": [{"name": "gc", "scope": "write", "sha256": "ab" * 32}]},
        }
    )
    shown = to_dict(config)
    text = yaml.safe_dump(shown)
    assert "hunter2" not in text
    assert "SK" not in text
    assert "ab" * 32 not in text
    assert shown["redis"]["password"] == "*****"
    assert shown["storage"]["s3"]["secretkey"] == "*****"
    assert shown["auth"]["tokens"][0]["sha256"] == "*****"
    assert shown["auth"]["tokens"][0]["name"] == "gc"
    # Unmasked, the printed config loads back to the same config.
    assert from_dict(to_dict(config, mask=False)) == config
