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


@pytest.mark.parametrize("text", ["", "1", "abc", "1x", "s", "-1s", "1s ms", True, [1], float("nan"), float("inf")])
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


# -- settings taken as written -------------------------------------------------------------

# Texts YAML 1.1 would resolve to something else: octal, sexagesimal, hex, float,
# boolean, timestamp, null-looking but quoted.
AS_WRITTEN = ["0123", "12:30", "0x1F", "1e3", "1_000", "yes", "on", "2001-12-14", "0o17", ".5", "+12"]


@pytest.mark.parametrize("text", AS_WRITTEN)
def test_a_string_key_keeps_the_text_written_in_the_file(tmp_path: Path, text: str) -> None:
    path = write(
        tmp_path,
        f"redis:\n  password: {text}\n  username: {text}\n"
        f"storage:\n  registry:\n    url: http://r\n    password: {text}\n    rootcas: [{text}]\n",
    )
    config = load(path, {})
    assert config.redis.password == text
    assert config.redis.username == text
    assert config.storage.registry is not None
    assert config.storage.registry.password == text
    assert config.storage.registry.rootcas == [text]


@pytest.mark.parametrize("text", [*AS_WRITTEN, "#s3cret", " padded ", "a: b", "[x]", "null", "", "'quoted'"])
def test_an_override_of_a_string_key_is_the_value_verbatim(text: str) -> None:
    config = load(None, {"DESCRIPTOR_REDIS_PASSWORD": text, "DESCRIPTOR_LOG_LEVEL": "info"})
    assert config.redis.password == text


def test_other_overrides_are_still_parsed_as_yaml() -> None:
    config = load(
        None,
        {
            "DESCRIPTOR_GRPC_MAXBATCH": "0x10",
            "DESCRIPTOR_STORAGE_DELETE_ENABLED": "true",
            "DESCRIPTOR_REDIS_DIALTIMEOUT": "250ms",
            "DESCRIPTOR_REDIS_ADDRS": "[0123:6379, 'b:1']",
            "DESCRIPTOR_STORAGE_CACHE": "{blobdescriptor: none}",
        },
    )
    assert config.grpc.maxbatch == 16
    assert config.storage.delete.enabled is True
    assert config.redis.dialtimeout == 0.25
    assert config.redis.addrs == ["0123:6379", "b:1"]  # list items are strings: as written
    assert config.storage.cache.blobdescriptor == "none"


def test_quoting_null_and_numbers_in_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'redis:\n  password: "#s3cret"\n  username: ~\n  db: 0x3\n'
        "  addrs: 127.0.0.1:6379\ngrpc:\n  maxbatch: 1_000\n  drain: 1:30\n",
    )
    config = load(path, {})
    assert config.redis.password == "#s3cret"
    assert config.redis.username == ""
    assert config.redis.db == 3  # an integer key still reads YAML numbers
    assert config.redis.addrs == ["127.0.0.1:6379"]
    assert config.grpc.maxbatch == 1000
    assert config.grpc.drain == 90.0  # durations keep YAML's number forms
    # An unquoted # starts a YAML comment: in a file the value is empty, by YAML's rules.
    assert load(write(tmp_path, "redis:\n  password: #s3cret\n"), {}).redis.password == ""


def test_type_errors_still_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, "grpc:\n  maxbatch: 12:30x\n"), {})
    assert info.value.key == "grpc.maxbatch"
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, "redis:\n  password: [a, b]\n"), {})
    assert info.value.key == "redis.password"
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, "storage: 0123\n"), {})
    assert info.value.key == "storage"
    # Merge keys and anchors still work.
    text = "base: &b {password: '0123'}\nredis:\n  <<: *b\n  db: 1\n"
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, text), {})
    assert info.value.key == "base"  # an unknown top-level key, as before


# -- secrets from files ---------------------------------------------------------------------

SECRET_FILES = [
    ("redis", "password", {}),
    ("storage.registry", "password", {"url": "http://r"}),
    ("storage.s3", "accesskey", {"bucket": "b"}),
    ("storage.s3", "secretkey", {"bucket": "b"}),
    ("storage.descriptorservice", "token", {"target": "t:1"}),
]


def _section(dotted: str, values: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = values
    for part in reversed(dotted.split(".")):
        data = {part: data}
    return data


def _value(config: Config, dotted: str, name: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = getattr(node, part)
    return getattr(node, name)


@pytest.mark.parametrize(("section", "name", "extra"), SECRET_FILES, ids=[f"{s}.{n}" for s, n, _ in SECRET_FILES])
def test_every_secret_has_a_file_sibling(tmp_path: Path, section: str, name: str, extra: dict[str, Any]) -> None:
    secret = tmp_path / "secret"
    secret.write_text("0123 #not a comment\n")
    config = from_dict(_section(section, {**extra, f"{name}file": str(secret)}))
    assert _value(config, section, name) == "0123 #not a comment"
    # Masked by --check-config, the file's path shown.
    shown: Any = to_dict(config)
    for part in section.split("."):
        shown = shown[part]
    assert shown[name] == "*****"
    assert shown[f"{name}file"] == str(secret)
    # Both set: an error naming both keys.
    with pytest.raises(ConfigError) as info:
        from_dict(_section(section, {**extra, name: "x", f"{name}file": str(secret)}))
    assert info.value.key == f"{section}.{name}"
    assert f"{section}.{name}file" in str(info.value)
    # Unreadable: an error naming the file key.
    with pytest.raises(ConfigError) as info:
        from_dict(_section(section, {**extra, f"{name}file": str(tmp_path / "missing")}))
    assert info.value.key == f"{section}.{name}file"
    assert "missing" in info.value.reason


def test_secret_file_from_the_environment(tmp_path: Path) -> None:
    secret = tmp_path / "redis-password"
    secret.write_bytes(b"#s3cret\r\n")  # a line ending written on Windows is not part of it
    config = load(None, {"DESCRIPTOR_REDIS_PASSWORDFILE": str(secret)})
    assert config.redis.password == "#s3cret"
    secret.write_bytes(b"two\nlines\n\n")  # only the last line ending is stripped
    assert load(None, {"DESCRIPTOR_REDIS_PASSWORDFILE": str(secret)}).redis.password == "two\nlines\n"
    with pytest.raises(ConfigError) as info:
        load(None, {"DESCRIPTOR_REDIS_PASSWORDFILE": str(tmp_path)})  # a directory
    assert info.value.key == "redis.passwordfile"


def test_bounded_backend_keys_are_validated() -> None:
    config = from_dict({})
    assert (config.storage.backendtimeout, config.storage.maxinflight, config.storage.maxpending) == (30.0, 64, 1024)
    config = load(None, {"DESCRIPTOR_STORAGE_BACKENDTIMEOUT": "2s", "DESCRIPTOR_STORAGE_MAXPENDING": "0"})
    assert (config.storage.backendtimeout, config.storage.maxpending) == (2.0, 0)
    for key, value in (("maxinflight", -1), ("maxpending", -1), ("backendtimeout", "-1s")):
        with pytest.raises(ConfigError) as info:
            from_dict({"storage": {key: value}})
        assert info.value.key == f"storage.{key}"


def test_check_config_with_secret_files_masks_them_and_names_bad_keys(tmp_path: Path) -> None:
    import os

    from helpers.support import run_server_command

    secret = tmp_path / "redis-password"
    secret.write_text("#s3cret from a file\n")
    access, key = tmp_path / "access", tmp_path / "key"
    access.write_text("AKIA-FROM-FILE\n")
    key.write_text("SECRET-FROM-FILE\n")
    path = write(
        tmp_path, {"storage": {"s3": {"bucket": "b", "accesskeyfile": str(access), "secretkeyfile": str(key)}}}
    )
    env = {**os.environ, "DESCRIPTOR_REDIS_PASSWORDFILE": str(secret)}
    proc = run_server_command(["--check-config", path], cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    for text in ("#s3cret", "AKIA-FROM-FILE", "SECRET-FROM-FILE"):
        assert text not in proc.stdout
    shown = yaml.safe_load(proc.stdout)
    assert shown["redis"]["password"] == "*****"
    assert shown["redis"]["passwordfile"] == str(secret)
    assert shown["storage"]["s3"]["accesskey"] == "*****"
    # Both set, or an unreadable file: one line naming the key, exit 2.
    env["DESCRIPTOR_REDIS_PASSWORD"] = "inline"
    proc = run_server_command(["--check-config", path], cwd=tmp_path, env=env)
    assert proc.returncode == 2
    assert "redis.password and redis.passwordfile are both set" in proc.stderr
    del env["DESCRIPTOR_REDIS_PASSWORD"]
    env["DESCRIPTOR_REDIS_PASSWORDFILE"] = str(tmp_path / "absent")
    proc = run_server_command(["--check-config", path], cwd=tmp_path, env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith(
        "redis.passwordfile: cannot read "
        + str(tmp_path / "absent")
        + ": No such file or directory (set by DESCRIPTOR_REDIS_PASSWORDFILE)"
    )


# -- distribution 2.x keys, suggestions, durations as written ---------------------------


def test_distribution_2x_redis_keys_are_read_as_their_3x_names(tmp_path: Path) -> None:
    text = """
redis:
  addr: 10.0.0.7:6380
  pool: {maxidle: 16, maxactive: 64, idletimeout: 300s}
"""
    config = load(write(tmp_path, text), {})
    assert config.redis.addrs == ["10.0.0.7:6380"]
    assert config.redis.maxidleconns == 16
    assert config.redis.poolsize == 64
    assert config.redis.connmaxidletime == 300.0
    warning = config.deprecation_warning()
    assert warning is not None
    for old, new in [
        ("redis.addr", "redis.addrs"),
        ("redis.pool.maxidle", "redis.maxidleconns"),
        ("redis.pool.maxactive", "redis.poolsize"),
        ("redis.pool.idletimeout", "redis.connmaxidletime"),
    ]:
        assert f"{old} -> {new}" in warning
    # The same config in 3.x names, and no warning.
    assert load(None, {}).deprecation_warning() is None
    modern = from_dict(
        {"redis": {"addrs": ["10.0.0.7:6380"], "maxidleconns": 16, "poolsize": 64, "connmaxidletime": "300s"}}
    )
    assert modern == config
    assert modern.deprecation_warning() is None


def test_a_bad_distribution_2x_redis_addr_is_named_as_written() -> None:
    with pytest.raises(ConfigError) as info:
        from_dict({"storage": {"cache": {"blobdescriptor": "redis"}}, "redis": {"addr": "nohostport"}})
    assert info.value.key == "redis.addr"
    assert "invalid address 'nohostport'" in info.value.reason


def test_distribution_2x_redis_keys_from_the_environment() -> None:
    config = load(None, {"DESCRIPTOR_REDIS_ADDR": "redis:6379", "DESCRIPTOR_REDIS_POOL_MAXACTIVE": "8"})
    assert config.redis.addrs == ["redis:6379"]
    assert config.redis.poolsize == 8
    assert config.deprecated == (("redis.addr", "redis.addrs"), ("redis.pool.maxactive", "redis.poolsize"))


@pytest.mark.parametrize(
    ("redis", "key", "says"),
    [
        ({"addr": "a:1", "addrs": ["b:2"]}, "redis.addr", "redis.addr (distribution 2.x) and redis.addrs are both set"),
        ({"pool": {"maxactive": 4}, "poolsize": 8}, "redis.pool.maxactive", "keep redis.poolsize"),
        ({"pool": {"maxidel": 4}}, "redis.pool.maxidel", "did you mean redis.pool.maxidle?"),
        ({"pool": 5}, "redis.pool", "want a mapping"),
        ({"pool": {"idletimeout": "soon"}}, "redis.pool.idletimeout", "invalid duration"),
        ({"maxidleconns": -1}, "redis.maxidleconns", "must be >= 0"),
    ],
)
def test_distribution_2x_redis_key_errors_name_the_keys(redis: dict[str, Any], key: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_dict({"redis": redis})
    assert info.value.key == key
    assert says in str(info.value)


@pytest.mark.parametrize(
    ("data", "key", "suggestion"),
    [
        ({"storge": {}}, "storge", "did you mean storage?"),
        ({"redis": {"adrs": ["a:1"]}}, "redis.adrs", "did you mean redis.addrs?"),
        ({"redis": {"Addrs": ["a:1"]}}, "redis.Addrs", "did you mean redis.addrs?"),
        ({"grpc": {"max_batch": 5}}, "grpc.max_batch", "did you mean grpc.maxbatch?"),
        ({"storage": {"cache": {"blobdescriptorsiz": 5}}}, "storage.cache.blobdescriptorsiz", "did you mean"),
        ({"http": {"debug": {"prometheus": {"enable": True}}}}, "http.debug.prometheus.enable", "enabled?"),
    ],
)
def test_an_unknown_key_gets_a_did_you_mean(data: dict[str, Any], key: str, suggestion: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(data)
    assert info.value.key == key
    assert info.value.reason.startswith("unknown key")
    assert suggestion in info.value.reason


def test_an_unknown_key_far_from_any_gets_no_guess() -> None:
    with pytest.raises(ConfigError) as info:
        from_dict({"grpc": {"zzzzzz": 1}})
    assert info.value.reason == "unknown key"


def test_a_go_redis_option_this_service_lacks_is_named_as_such() -> None:
    with pytest.raises(ConfigError) as info:
        from_dict({"redis": {"poolfifo": True}})
    assert info.value.key == "redis.poolfifo"
    assert "distribution's redis.poolfifo is not supported here" in info.value.reason


def test_check_config_prints_durations_as_written_and_the_deprecation_once(tmp_path: Path) -> None:
    import os

    from helpers.support import run_server_command

    text = """
grpc: {drain: 1m30s, keepalive: {time: 90}}
redis: {dialtimeout: 1500ms, addr: "127.0.0.1:6379"}
storage: {backendtimeout: 0.25}
"""
    env = {**os.environ, "DESCRIPTOR_GRPC_HEALTHPROBEINTERVAL": "2m"}
    proc = run_server_command(["--check-config", write(tmp_path, text)], cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    shown = yaml.safe_load(proc.stdout)
    assert shown["grpc"]["drain"] == "1m30s"
    assert shown["grpc"]["keepalive"]["time"] == 90  # a number of seconds stays a number
    assert shown["redis"]["dialtimeout"] == "1500ms"
    assert shown["storage"]["backendtimeout"] == 0.25
    assert shown["grpc"]["healthprobeinterval"] == "2m"  # from the environment, as written
    # Defaults, not written, in Go's notation.
    assert shown["redis"]["readtimeout"] == "500ms"
    assert shown["grpc"]["keepalive"]["timeout"] == "20s"
    assert shown["redis"]["connmaxidletime"] == "30m"
    # The printed config loads back to the same one.
    again = tmp_path / "again.yml"
    again.write_text(proc.stdout)
    assert load(str(again), {}) == load(write(tmp_path, text), {"DESCRIPTOR_GRPC_HEALTHPROBEINTERVAL": "2m"})
    assert proc.stderr.count("distribution 2.x keys") == 1
    assert "redis.addr -> redis.addrs" in proc.stderr
    assert "addr" not in shown["redis"]
    assert shown["redis"]["addrs"] == ["127.0.0.1:6379"]


@pytest.mark.parametrize(
    ("file", "env", "want"),
    [
        ({"addr": "file:6379"}, {"DESCRIPTOR_REDIS_ADDRS": "[env:6379]"}, ["env:6379"]),
        ({"addrs": ["file:6379"]}, {"DESCRIPTOR_REDIS_ADDR": "env:6379"}, ["env:6379"]),
        ({"addr": "file:6379"}, {"DESCRIPTOR_REDIS_ADDR": "[::1]:6379"}, ["[::1]:6379"]),  # verbatim
    ],
)
def test_the_environment_overrides_a_2x_file_key_under_either_name(
    tmp_path: Path, file: dict[str, Any], env: dict[str, str], want: list[str]
) -> None:
    config = load(write(tmp_path, {"redis": file}), env)
    assert config.redis.addrs == want
    assert config.deprecation_warning() is not None


def test_both_names_in_the_environment_is_an_error_naming_both() -> None:
    with pytest.raises(ConfigError) as info:
        load(None, {"DESCRIPTOR_REDIS_POOL_MAXACTIVE": "8", "DESCRIPTOR_REDIS_POOLSIZE": "9"})
    assert "DESCRIPTOR_REDIS_POOL_MAXACTIVE (distribution 2.x) and DESCRIPTOR_REDIS_POOLSIZE" in str(info.value)


@pytest.mark.parametrize(
    ("pool", "key", "says"),
    [
        ({"maxidle": 0}, "redis.pool.maxidle", "0 kept no idle connection in distribution 2.x"),
        ({"maxactive": 0}, "redis.pool.maxactive", "0 meant no limit in distribution 2.x"),
    ],
)
def test_a_2x_zero_that_means_something_else_in_3x_is_refused(
    tmp_path: Path, pool: dict[str, int], key: str, says: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, {"redis": {"pool": pool}}), {})
    assert info.value.key == key
    assert says in info.value.reason
    env = {f"DESCRIPTOR_REDIS_POOL_{k.upper()}": str(v) for k, v in pool.items()}
    with pytest.raises(ConfigError) as info:
        load(None, env)
    assert info.value.key == key


def test_an_error_found_at_start_names_the_2x_key_as_written(tmp_path: Path) -> None:
    from helpers.support import run_server_command

    path = write(tmp_path, {"storage": {"cache": {"blobdescriptor": "redis"}}, "redis": {"addr": "127.0.0.1:0"}})
    proc = run_server_command(["--check-config", path], cwd=tmp_path)
    assert proc.returncode == 2
    assert "config error: redis.addr: invalid address '127.0.0.1:0'" in proc.stderr


# -- config errors all at once, where they are --------------------------------------------------


def _check(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Any:
    import os

    from helpers.support import run_server_command

    path = tmp_path / "config.yml"
    path.write_text(text)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DESCRIPTOR_")}
    return run_server_command(["--check-config", str(path)], cwd=tmp_path, env={**environ, **(env or {})})


def test_every_structural_error_is_reported_in_one_run(tmp_path: Path) -> None:
    done = _check(
        tmp_path,
        "grpc:\n  maxbach: 3\n  maxbatch: many\nstorag: {}\nredis:\n  dialtimeout: soon\n  poolsize: lots\n",
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert all(line.startswith("descriptor-server: config error: ") for line in lines), lines
    keys = {line.split(": ")[2] for line in lines}
    assert keys == {"grpc.maxbach", "grpc.maxbatch", "storag", "redis.dialtimeout", "redis.poolsize"}, lines


def test_a_yaml_syntax_error_says_where(tmp_path: Path) -> None:
    done = _check(tmp_path, "grpc:\n  addr: 127.0.0.1:5051\n  maxbatch: [1, 2\nlog: {}\n")
    assert done.returncode == 2
    assert "is not valid YAML at line " in done.stderr
    assert ", column " in done.stderr


def test_a_distribution_config_is_accepted_with_one_warning(tmp_path: Path) -> None:
    """One file for the registry and the service: the registry's own keys are ignored."""
    registry_config = {
        "version": 0.1,
        "log": {"level": "info", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(tmp_path)},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {"addr": ":5000", "headers": {"X-Content-Type-Options": ["nosniff"]}},
        "health": {"storagedriver": {"enabled": True, "interval": "10s"}},
        "notifications": {"endpoints": []},
        "grpc": {"addr": "127.0.0.1:0"},
    }
    done = _check(tmp_path, yaml.safe_dump(registry_config))
    assert done.returncode == 0, done.stderr
    warnings = done.stderr.strip().splitlines()
    assert len(warnings) == 1, warnings
    for key in ("version", "health", "notifications", "http.addr", "http.headers", "log.accesslog"):
        assert key in warnings[0]
    assert "storage.maintenance" in warnings[0]


def test_an_environment_override_error_names_the_variable(tmp_path: Path) -> None:
    done = _check(tmp_path, "grpc: {addr: '127.0.0.1:0'}\n", env={"DESCRIPTOR_GRPC_MAXBATCH": "lots"})
    assert done.returncode == 2
    assert "grpc.maxbatch" in done.stderr
    assert "DESCRIPTOR_GRPC_MAXBATCH" in done.stderr


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [
        ("storge", "storage"),
        ("grpc.maxbach", "grpc.maxbatch"),
        ("auht", "auth"),
        ("halth", None),  # not auth: three letters of six are not a typo
        ("grpc.addres", "grpc.addr"),
        ("grpc.zzz", None),
    ],
)
def test_did_you_mean_only_when_it_helps(key: str, suggestion: str | None) -> None:
    parts = key.split(".")
    data: dict[str, Any] = {parts[-1]: 1}
    for part in reversed(parts[:-1]):
        data = {part: data}
    with pytest.raises(ConfigError) as info:
        from_dict(data)
    if suggestion is None:
        assert "did you mean" not in str(info.value), str(info.value)
    else:
        assert f"did you mean {suggestion}?" in str(info.value)
