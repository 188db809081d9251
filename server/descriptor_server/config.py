"""Server configuration: YAML shaped like distribution's, plus ``DESCRIPTOR_*`` overrides.

Every section is a small frozen dataclass. :func:`load` reads a YAML file (or the
embedded default), applies environment overrides (``DESCRIPTOR_`` + the key path in
upper case joined by ``_``) for paths under ``storage``, ``redis``, ``grpc``, ``http``,
``log`` and ``auth``, and validates everything. A bad value or an unknown key raises
:class:`ConfigError` naming the key.

Settings are taken as written, as distribution's YAML decoding into string fields
does: a string-typed key keeps its scalar's text (``0123``, ``12:30``, ``0x1F`` stay
what they say; only ``null``, ``~`` or nothing is the empty string), and an override
of a string-typed key is the variable's value verbatim. Overrides of other keys
(numbers, booleans, durations, lists, mappings) are parsed as YAML.

Every secret (a ``Secret`` field: ``redis.password``, ``storage.registry.password``,
``storage.s3.accesskey`` / ``secretkey``, ``storage.descriptorservice.token``) has a
``<name>file`` sibling (``redis.passwordfile``) naming a file read at load time,
trailing newlines stripped (a Kubernetes secret mounted as a file).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Union

import yaml

#: Markers for fields that need more than their Python type says.
DURATION = "duration"
SECRET = "secret"

Duration = Annotated[float, DURATION]
Secret = Annotated[str, SECRET]

#: Metadata of a Config field that is not a key (filled in by loading, never read from YAML).
INTERNAL = {"internal": True}

OVERRIDABLE = ("storage", "redis", "grpc", "http", "log", "auth")
ENV_PREFIX = "DESCRIPTOR_"


class ConfigError(Exception):
    """A configuration problem: ``key`` is the dotted path, ``reason`` what is wrong."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}" if key else reason)
        self.key = key
        self.reason = reason

    def report(self) -> None:
        """The one line a refused start prints on stderr (the caller exits with status 2)."""
        print(f"descriptor-server: config error: {self}", file=sys.stderr, flush=True)


# -- sections ---------------------------------------------------------------------


@dataclass(frozen=True)
class FilesystemConfig:
    rootdirectory: str = "./data"


@dataclass(frozen=True)
class RegistryBackendConfig:
    url: str = ""
    username: str = ""
    password: Secret = ""
    passwordfile: str = ""
    timeout: Duration = 10.0
    insecureskipverify: bool = False
    rootcas: list[str] = field(default_factory=list)
    #: Bearer tokens kept, one per repository and verb (least recently used dropped).
    maxtokens: int = 1000


@dataclass(frozen=True)
class ClientTLSConfig:
    enabled: bool = False
    ca: str = ""
    certificate: str = ""
    key: str = ""
    servername: str = ""


@dataclass(frozen=True)
class DescriptorServiceBackendConfig:
    target: str = ""
    token: Secret = ""
    tokenfile: str = ""
    timeout: Duration = 5.0
    tls: ClientTLSConfig = field(default_factory=ClientTLSConfig)


@dataclass(frozen=True)
class S3Config:
    bucket: str = ""
    region: str = "us-east-1"
    regionendpoint: str = ""
    accesskey: Secret = ""
    accesskeyfile: str = ""
    secretkey: Secret = ""
    secretkeyfile: str = ""
    rootdirectory: str = ""
    forcepathstyle: bool = False


@dataclass(frozen=True)
class CacheConfig:
    blobdescriptor: str = "inmemory"
    blobdescriptorsize: int = 10000
    #: Check a cached entry against the backend again on its first hit after this long (0 = never).
    revalidate: Duration = 0.0
    #: Most revalidations started per second (0 = no limit).
    revalidaterate: int = 100


@dataclass(frozen=True)
class DeleteConfig:
    enabled: bool = False


BACKENDS = ("filesystem", "registry", "descriptorservice", "s3")
CACHES = ("inmemory", "redis", "none")


@dataclass(frozen=True)
class StorageConfig:
    filesystem: FilesystemConfig | None = None
    registry: RegistryBackendConfig | None = None
    descriptorservice: DescriptorServiceBackendConfig | None = None
    s3: S3Config | None = None
    cache: CacheConfig = field(default_factory=CacheConfig)
    delete: DeleteConfig = field(default_factory=DeleteConfig)
    #: Deadline of one backend read (Stat); 0 = none beyond the backend's own.
    backendtimeout: Duration = 30.0
    #: Backend reads in flight at once, and reads waiting for one of those slots;
    #: beyond both, a read is refused at once with BACKEND_UNAVAILABLE. 0 = unbounded.
    maxinflight: int = 64
    maxpending: int = 1024

    @property
    def backend(self) -> str:
        """The one backend configured (``filesystem`` when none is)."""
        for name in BACKENDS:
            if getattr(self, name) is not None:
                return name
        return "filesystem"


@dataclass(frozen=True)
class RedisTLSConfig:
    enabled: bool = False
    certificate: str = ""
    key: str = ""
    rootcas: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RedisNearCacheConfig:
    #: Entries held in this process in front of Redis (per scope table); 0 turns it off.
    size: int = 10000


@dataclass(frozen=True)
class RedisConfig:
    addrs: list[str] = field(default_factory=lambda: ["127.0.0.1:6379"])
    db: int = 0
    username: str = ""
    password: Secret = ""
    passwordfile: str = ""
    mastername: str = ""
    dialtimeout: Duration = 1.0
    readtimeout: Duration = 0.5
    writetimeout: Duration = 0.5
    poolsize: int = 32
    #: Idle connections kept open in the pool; more are closed when they are returned
    #: (go-redis's MaxIdleConns; 0 = no limit). distribution 2.x: ``redis.pool.maxidle``.
    maxidleconns: int = 0
    #: A connection idle longer than this is closed before it is used again
    #: (go-redis's ConnMaxIdleTime; 0 = never). distribution 2.x: ``redis.pool.idletimeout``.
    connmaxidletime: Duration = 1800.0
    tls: RedisTLSConfig = field(default_factory=RedisTLSConfig)
    nearcache: RedisNearCacheConfig = field(default_factory=RedisNearCacheConfig)


@dataclass(frozen=True)
class GrpcTLSConfig:
    certificate: str = ""
    key: str = ""
    clientcas: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class GrpcKeepaliveConfig:
    time: Duration = 7200.0
    timeout: Duration = 20.0
    minpinginterval: Duration = 300.0
    permitwithoutcalls: bool = False
    maxpingstrikes: int = 2
    maxconnectionidle: Duration = 0.0
    maxconnectionage: Duration = 0.0
    maxconnectionagegrace: Duration = 30.0


@dataclass(frozen=True)
class GrpcConfig:
    addr: str = "127.0.0.1:5051"
    maxbatch: int = 1000
    maxrecvmsgsize: int = 4 * 1024 * 1024
    maxmetadatasize: int = 8 * 1024
    maxconcurrentcalls: int = 0
    drain: Duration = 30.0
    healthaddr: str = ""
    #: How often the backend is probed for the service's health status (0 = never).
    healthprobeinterval: Duration = 10.0
    workers: int = 1
    #: The service is also NOT_SERVING while the cache fails its probe (off: cache
    #: failures are answered from the backend, so the service stays SERVING).
    healthprobecache: bool = False
    tls: GrpcTLSConfig = field(default_factory=GrpcTLSConfig)
    keepalive: GrpcKeepaliveConfig = field(default_factory=GrpcKeepaliveConfig)


@dataclass(frozen=True)
class AuthToken:
    name: str = ""
    scope: str = "read"
    sha256: Secret = ""


@dataclass(frozen=True)
class TokenAccessConfig:
    """A resource of a registry token's ``access`` claim: ``{type, name}``."""

    type: str = "registry"
    name: str = "descriptors"


#: distribution's token signing algorithms (``auth.token.signingalgorithms``).
SIGNING_ALGORITHMS = (
    "EdDSA",
    "HS256",
    "HS384",
    "HS512",
    "RS256",
    "RS384",
    "RS512",
    "ES256",
    "ES384",
    "ES512",
    "PS256",
    "PS384",
    "PS512",
)


@dataclass(frozen=True)
class TokenAuthConfig:
    """``auth.token``: distribution's token auth (the registry's own bearer tokens)."""

    realm: str = ""
    service: str = ""
    issuer: str = ""
    rootcertbundle: str = ""
    jwks: str = ""
    signingalgorithms: list[str] = field(default_factory=list)
    #: The resource a token must grant for a call in the global scope and for GetMetrics.
    globalaccess: TokenAccessConfig = field(default_factory=TokenAccessConfig)
    #: Verified tokens kept (LRU, each until its exp); 0 = verify every call.
    cachesize: int = 10000
    #: How often rootcertbundle and jwks are checked for changes (0 = only on SIGHUP).
    reloadinterval: Duration = 10.0


@dataclass(frozen=True)
class AuthConfig:
    tokens: list[AuthToken] = field(default_factory=list)
    tokensfile: str = ""
    token: TokenAuthConfig | None = None


@dataclass(frozen=True)
class PrometheusConfig:
    enabled: bool = False
    path: str = "/metrics"


@dataclass(frozen=True)
class DebugConfig:
    addr: str = ""
    prometheus: PrometheusConfig = field(default_factory=PrometheusConfig)


@dataclass(frozen=True)
class HttpConfig:
    debug: DebugConfig = field(default_factory=DebugConfig)


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    formatter: str = "text"
    #: Fixed fields added to every log line (distribution's ``log.fields``); values kept as text.
    fields: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    storage: StorageConfig = field(default_factory=StorageConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    grpc: GrpcConfig = field(default_factory=GrpcConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    log: LogConfig = field(default_factory=LogConfig)
    #: distribution 2.x keys read as their 3.x names: ``(old, new)`` dotted paths.
    deprecated: tuple[tuple[str, str], ...] = field(default=(), metadata=INTERNAL, compare=False)

    def deprecation_warning(self) -> str | None:
        """The one warning for the 2.x keys this config used (None when it used none)."""
        if not self.deprecated:
            return None
        pairs = ", ".join(f"{old} -> {new}" for old, new in self.deprecated)
        return (
            f"config: distribution 2.x keys read as their 3.x names ({pairs});"
            " rename them: the 2.x names are deprecated"
        )


# -- loading --------------------------------------------------------------------------


def load(path: str | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """The effective configuration: the file (or defaults), then the environment."""
    data: Any = {}
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                data = compose(f)
        except OSError as err:
            raise ConfigError("", f"cannot read config file {path}: {err.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError("", f"config file {path} is not UTF-8 text") from None
        except yaml.YAMLError as err:
            raise ConfigError("", f"config file {path} is not valid YAML: {_first_line(err)}") from None
        data = _resolved(data)
        if data is None:
            data = {}
    if not isinstance(data, dict):
        raise ConfigError("", "the config file must hold a mapping at the top level")
    apply_environment(data, os.environ if environ is None else environ)
    return from_dict(data)


class Scalar:
    """A YAML scalar as written (``text``) and as YAML resolves it (``value``).

    A string-typed key takes the text; any other key the resolved value.
    """

    __slots__ = ("text", "value")

    def __init__(self, text: str, value: Any) -> None:
        self.text = text
        self.value = value

    def __repr__(self) -> str:
        return f"Scalar({self.text!r})"


def compose(stream: Any) -> Any:
    """YAML (safe tags only) as plain dicts and lists whose scalars are :class:`Scalar`."""
    loader = yaml.SafeLoader(stream)
    try:
        node = loader.get_single_node()
        return None if node is None else _node_data(loader, node)
    finally:
        loader.dispose()


def _node_data(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # YAML merge keys (<<)
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                key: Any = key_node.value  # a key is a name, taken as written
            else:
                key = repr(loader.construct_object(key_node, deep=True))  # never a known key
            out[key] = _node_data(loader, value_node)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_node_data(loader, item) for item in node.value]
    try:
        value = loader.construct_object(node, deep=True)
    except (yaml.YAMLError, ValueError, OverflowError):  # e.g. a timestamp-shaped 2001-13-45
        value = node.value
    return Scalar(str(node.value), value)


def _resolved(value: Any) -> Any:
    return value.value if isinstance(value, Scalar) else value


def from_dict(data: Mapping[str, Any]) -> Config:
    """Build and validate a Config from a plain mapping (``…file`` secrets read here)."""
    data, deprecated = map_legacy_keys(data)
    try:
        config: Config = _build(Config, data, "")
        if deprecated:
            config = dataclasses.replace(config, deprecated=tuple(deprecated))
        config = read_secret_files(config)
        validate(config)
    except ConfigError as err:  # name the key as the config wrote it
        for written, moved in deprecated:
            if err.key == moved or err.key.startswith((moved + ".", moved + "[")):
                rest = err.key[len(moved) :]
                if written == "redis.addr" and rest == "[0]":
                    rest = ""  # 2.x's addr is the one address
                raise ConfigError(written + rest, err.reason) from None
        raise
    return config


def hint_at(parts: list[str]) -> Any:
    """The type hint of the key at ``parts`` (``["redis", "password"]``), or None if unknown."""
    hint: Any = Config
    for part in parts:
        hint = _strip_optional(hint)
        if not dataclasses.is_dataclass(hint):
            return None
        hints = typing.get_type_hints(hint, include_extras=True)
        if part not in hints:
            return None
        hint = hints[part]
    return hint


def _strip_optional(hint: Any) -> Any:
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0]
    return hint


def is_text(hint: Any) -> bool:
    """True for a string-typed key (a duration is not one: it is parsed)."""
    hint = _strip_optional(hint)
    if typing.get_origin(hint) is Annotated:
        base, *marks = typing.get_args(hint)
        return DURATION not in marks and is_text(base)
    return hint is str


def apply_environment(data: dict[str, Any], environ: Mapping[str, str]) -> None:
    """Apply ``DESCRIPTOR_*`` overrides in place.

    The override of a string-typed key is the variable's value verbatim; any other
    value is parsed as YAML (scalars kept as written, as in the file).
    """
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX):
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("_")
        if parts[0] not in OVERRIDABLE:
            continue
        key = ".".join(parts)
        if not all(parts):
            raise ConfigError(key, f"{name} has an empty part (keys are joined by single underscores)")
        value: Any
        if is_text(hint_at(parts)):
            value = environ[name]
        else:
            try:
                value = compose(environ[name])
            except yaml.YAMLError as err:
                raise ConfigError(key, f"{name} is not valid YAML: {_first_line(err)}") from None
        node = data
        for i, part in enumerate(parts[:-1]):
            child = _resolved(node.get(part))
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(".".join(parts[: i + 1]), f"{name} sets a key under a value that is not a mapping")
            node = child
        node[parts[-1]] = value


def _build(cls: type[Any], data: Any, path: str) -> Any:
    data = _resolved(data)
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(path, f"want a mapping, got {_kind(data)}")
    hints = typing.get_type_hints(cls, include_extras=True)
    names = [f.name for f in dataclasses.fields(cls) if not f.metadata.get("internal")]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        sub = f"{path}.{key}" if path else str(key)
        if not isinstance(key, str) or key not in names:
            raise ConfigError(sub, unknown_key(key, names, path))
        kwargs[key] = _convert(hints[key], value, sub)
    return cls(**kwargs)


#: go-redis options distribution 3.x reads under ``redis`` that this service does not have.
DISTRIBUTION_REDIS_ONLY = frozenset(
    (
        "clientname",
        "protocol",
        "sentinelusername",
        "sentinelpassword",
        "maxretries",
        "minretrybackoff",
        "maxretrybackoff",
        "contexttimeoutenabled",
        "poolfifo",
        "pooltimeout",
        "minidleconns",
        "maxactiveconns",
        "connmaxlifetime",
        "maxredirects",
        "readonly",
        "routebylatency",
        "routerandomly",
        "disableidentity",
        "identitysuffix",
        "unstableresp3",
    )
)


def unknown_key(key: Any, names: list[str], path: str) -> str:
    """The reason for an unknown key: with the closest known name, if one is close."""
    text = str(key)
    if path == "redis" and text in DISTRIBUTION_REDIS_ONLY:
        return f"unknown key (distribution's redis.{text} is not supported here; see the README, Configuration)"
    lowered = {name.lower(): name for name in names}
    match = lowered.get(text.lower().replace("_", "").replace("-", ""))
    if match is None:
        close = difflib.get_close_matches(text.lower(), list(lowered), n=1, cutoff=0.6)
        match = lowered[close[0]] if close else None
    if match is None:
        return "unknown key"
    return f"unknown key (did you mean {path}.{match}?)" if path else f"unknown key (did you mean {match}?)"


#: distribution 2.x's Redis keys, read as the 3.x keys (go-redis's names) they became.
LEGACY_REDIS_KEYS = {
    ("addr",): "addrs",
    ("pool", "maxidle"): "maxidleconns",
    ("pool", "maxactive"): "poolsize",
    ("pool", "idletimeout"): "connmaxidletime",
}


def map_legacy_keys(data: Mapping[str, Any]) -> tuple[Mapping[str, Any], list[tuple[str, str]]]:
    """``data`` with distribution 2.x's Redis keys moved to their 3.x names, and the moves made.

    Setting both a 2.x key and its 3.x key is a config error naming both; so is an
    unknown key under ``redis.pool``.
    """
    redis = _resolved(data.get("redis"))
    if not isinstance(redis, Mapping) or not ("addr" in redis or "pool" in redis):
        return data, []
    redis = dict(redis)
    moves: list[tuple[str, str]] = []
    pool = _resolved(redis.pop("pool", None))
    if pool is None:
        pool = {}
    if not isinstance(pool, Mapping):
        raise ConfigError("redis.pool", f"want a mapping, got {_kind(pool)} (distribution 2.x's pool settings)")
    pool_names = [old[1] for old in LEGACY_REDIS_KEYS if len(old) == 2]
    for key in pool:
        if key not in pool_names:
            raise ConfigError(f"redis.pool.{key}", unknown_key(key, pool_names, "redis.pool"))
    found: list[tuple[tuple[str, ...], Any]] = []
    if "addr" in redis:
        found.append((("addr",), redis.pop("addr")))
    found.extend((("pool", key), pool[key]) for key in pool_names if key in pool)
    for old, value in found:
        new = LEGACY_REDIS_KEYS[old]
        old_path, new_path = "redis." + ".".join(old), f"redis.{new}"
        if new in redis:
            raise ConfigError(old_path, f"{old_path} (distribution 2.x) and {new_path} are both set (keep {new_path})")
        redis[new] = value
        moves.append((old_path, new_path))
    out = dict(data)
    out["redis"] = redis
    return out, moves


def read_secret_files(config: Any, path: str = "") -> Any:
    """``config`` with every secret whose ``…file`` sibling is set read from that file.

    Both set is a config error naming both keys; an unreadable file one naming the
    ``…file`` key. One trailing line ending is not part of the secret.
    """
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        return config
    hints = typing.get_type_hints(type(config), include_extras=True)
    names = {f.name for f in dataclasses.fields(config)}
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        sub = f"{path}.{f.name}" if path else f.name
        if dataclasses.is_dataclass(value):
            new = read_secret_files(value, sub)
            if new is not value:
                changes[f.name] = new
        elif SECRET in getattr(hints[f.name], "__metadata__", ()) and f"{f.name}file" in names:
            file = getattr(config, f"{f.name}file")
            if not file:
                continue
            if value:
                raise ConfigError(sub, f"{sub} and {sub}file are both set (set one of them)")
            changes[f.name] = read_secret(file, f"{sub}file")
    return dataclasses.replace(config, **changes) if changes else config


def read_secret(path: str, key: str) -> str:
    """The text of a secret file without its trailing line ending (ConfigError naming ``key``)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as err:
        raise ConfigError(key, f"cannot read {path}: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise ConfigError(key, f"{path} is not UTF-8 text") from None
    if text.endswith("\n"):
        text = text[:-2] if text.endswith("\r\n") else text[:-1]
    return text


def _convert(hint: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is Annotated:
        base, *marks = typing.get_args(hint)
        if DURATION in marks:
            seconds = parse_duration(_resolved(value), path)
            if isinstance(value, Scalar):
                written = value.value if isinstance(value.value, int | float) else value.text
                return WrittenDuration(seconds, written)
            return seconds
        return _convert(base, value, path)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _convert(args[0], value, path)
    if isinstance(value, Scalar):
        if hint is str:  # taken as written; only null, ~ or nothing is empty
            return "" if value.value is None else value.text
        if origin is list and typing.get_args(hint) == (str,) and value.value is not None:
            return [value.text]  # one item written without a list
        value = value.value
    if origin is list:
        (item,) = typing.get_args(hint)
        if value is None:
            return []
        if isinstance(value, str) and item is str:
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(path, f"want a list, got {_kind(value)}")
        return [_convert(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        key_type, item = typing.get_args(hint)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ConfigError(path, f"want a mapping, got {_kind(value)}")
        return {_convert(key_type, k, path): _convert(item, v, f"{path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        return _build(typing.cast(type[Any], hint), value, path)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(path, f"want true or false, got {_kind(value)}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(path, f"want an integer, got {_kind(value)}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(path, f"want a number, got {_kind(value)}")
    if hint is str:
        if value is None:
            return ""
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(path, f"want a string, got {_kind(value)}")
    raise ConfigError(path, f"unsupported type {hint!r}")  # pragma: no cover


class WrittenDuration(float):
    """A duration in seconds that remembers how the config wrote it (``1m30s``, ``500ms``, ``90``).

    It is the float everywhere; ``--check-config`` prints :attr:`written`.
    """

    __slots__ = ("written",)
    written: str | int | float

    def __new__(cls, seconds: float, written: str | int | float) -> WrittenDuration:
        self = super().__new__(cls, seconds)
        self.written = written
        return self

    def __reduce__(self) -> tuple[type[WrittenDuration], tuple[float, str | int | float]]:
        return (WrittenDuration, (float(self), self.written))


def format_duration(seconds: float) -> str:
    """A Go-style duration for a default that was not written (``30s``, ``500ms``, ``1m30s``)."""
    if seconds == 0:
        return "0s"
    if seconds < 1:
        ms = seconds * 1000
        return f"{ms:g}ms" if ms >= 1 else f"{seconds * 1e6:g}us"
    whole = int(seconds)
    if whole != seconds or whole < 60:
        return f"{seconds:g}s"
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else "", f"{secs}s" if secs else ""]
    return "".join(parts)


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def check_workers(config: Config) -> None:
    """Refuse workers that would disagree: each has its own in-memory cache, and a Clear
    reaches one worker only, so the others would keep answering the deleted blob."""
    storage = config.storage
    if config.grpc.workers > 1 and storage.cache.blobdescriptor == "inmemory" and storage.delete.enabled:
        raise ConfigError(
            "grpc.workers",
            f"{config.grpc.workers} workers with storage.cache.blobdescriptor inmemory and storage.delete.enabled:"
            " a Clear would reach one worker's cache only (use the redis cache, one worker, or disable deletion)",
        )


def parse_duration(value: Any, path: str) -> float:
    """Seconds from a Go duration (``1s``, ``500ms``, ``1m30s``) or a number of seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        pos, seconds = 0, 0.0
        for m in _DURATION_PART.finditer(text):
            if m.start() != pos:
                break
            seconds += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if pos != len(text) or pos == 0:
            raise ConfigError(path, f"invalid duration {value!r} (want e.g. 500ms, 1s, 1m30s)")
    else:
        raise ConfigError(path, f"want a duration such as 1s, got {_kind(value)}")
    if seconds < 0:
        raise ConfigError(path, "duration must not be negative")
    return seconds


_HOSTPORT = re.compile(r"(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]*):(\d{1,5})")


def check_address(value: str, path: str, *, allow_empty: bool = False) -> None:
    """Refuse anything but ``host:port`` (``[v6]:port``; port 0 picks a free one)."""
    if allow_empty and not value:
        return
    m = _HOSTPORT.fullmatch(value)
    if m is None or int(m.group(1)) > 65535:
        raise ConfigError(path, f"invalid address {value!r} (want host:port)")


def validate_redis(redis: RedisConfig) -> None:
    """The ``redis`` section's cross-field checks (also run by the redis cache itself)."""
    if len(redis.addrs) > 1 and not redis.mastername and redis.db != 0:
        raise ConfigError("redis.db", "must be 0 with Redis Cluster (several addrs)")
    for key in ("dialtimeout", "readtimeout", "writetimeout"):
        if getattr(redis, key) <= 0:
            raise ConfigError(f"redis.{key}", "must be > 0")
    tls = redis.tls
    if not tls.enabled and (tls.certificate or tls.key or tls.rootcas):
        raise ConfigError("redis.tls.enabled", "must be true when certificate, key or rootcas are set")
    if bool(tls.certificate) != bool(tls.key):
        raise ConfigError("redis.tls", "certificate and key go together")
    if redis.nearcache.size < 0:
        raise ConfigError("redis.nearcache.size", "must be >= 0 (0 turns the near cache off)")


def validate(config: Config) -> None:
    """Cross-field and value checks, each naming its key."""
    storage = config.storage
    configured = [name for name in BACKENDS if getattr(storage, name) is not None]
    if len(configured) > 1:
        raise ConfigError("storage", f"more than one backend configured: {', '.join(configured)}")
    cache = storage.cache
    if cache.blobdescriptor not in CACHES:
        raise ConfigError(
            "storage.cache.blobdescriptor",
            f"unknown cache type {cache.blobdescriptor!r} (want {', '.join(CACHES)})",
        )
    if cache.blobdescriptorsize < 0:
        raise ConfigError("storage.cache.blobdescriptorsize", "must be >= 0 (0 = unbounded)")
    if cache.revalidaterate < 0:
        raise ConfigError("storage.cache.revalidaterate", "must be >= 0 (0 = no limit)")
    if storage.maxinflight < 0:
        raise ConfigError("storage.maxinflight", "must be >= 0 (0 = unbounded)")
    if storage.maxpending < 0:
        raise ConfigError("storage.maxpending", "must be >= 0 (0 = no read waits: beyond maxinflight, refused)")
    if storage.registry is not None and not storage.registry.url:
        raise ConfigError("storage.registry.url", "required")
    if storage.descriptorservice is not None and not storage.descriptorservice.target:
        raise ConfigError("storage.descriptorservice.target", "required")
    if storage.s3 is not None and not storage.s3.bucket:
        raise ConfigError("storage.s3.bucket", "required")
    if cache.blobdescriptor == "redis":
        if not config.redis.addrs:
            raise ConfigError("redis.addrs", "at least one address is required for the redis cache")
        for i, addr in enumerate(config.redis.addrs):
            check_address(addr, f"redis.addrs[{i}]")
        validate_redis(config.redis)
    if config.redis.db < 0:
        raise ConfigError("redis.db", "must be >= 0")
    if config.redis.poolsize < 1:
        raise ConfigError("redis.poolsize", "must be >= 1")
    if config.redis.maxidleconns < 0:
        raise ConfigError("redis.maxidleconns", "must be >= 0 (0 = no limit)")
    if config.redis.nearcache.size < 0:
        raise ConfigError("redis.nearcache.size", "must be >= 0 (0 turns the near cache off)")
    grpc = config.grpc
    check_address(grpc.addr, "grpc.addr")
    check_address(grpc.healthaddr, "grpc.healthaddr", allow_empty=True)
    if grpc.maxbatch < 1:
        raise ConfigError("grpc.maxbatch", "must be >= 1")
    if grpc.maxrecvmsgsize < 1024:
        raise ConfigError("grpc.maxrecvmsgsize", "must be >= 1024")
    if grpc.maxconcurrentcalls < 0:
        raise ConfigError("grpc.maxconcurrentcalls", "must be >= 0 (0 = unlimited)")
    if grpc.maxmetadatasize < 1024:
        raise ConfigError("grpc.maxmetadatasize", "must be >= 1024")
    if grpc.keepalive.time <= 0:
        raise ConfigError("grpc.keepalive.time", "must be > 0")
    if grpc.keepalive.timeout <= 0:
        raise ConfigError("grpc.keepalive.timeout", "must be > 0")
    if grpc.keepalive.maxpingstrikes < 0:
        raise ConfigError("grpc.keepalive.maxpingstrikes", "must be >= 0 (0 = no strike allowed)")
    if grpc.workers < 1:
        raise ConfigError("grpc.workers", "must be >= 1")
    check_workers(config)
    if bool(grpc.tls.certificate) != bool(grpc.tls.key):
        raise ConfigError("grpc.tls", "certificate and key go together")
    if grpc.tls.clientcas and not grpc.tls.certificate:
        raise ConfigError("grpc.tls.clientcas", "needs grpc.tls.certificate and grpc.tls.key")
    for i, token in enumerate(config.auth.tokens):
        if token.scope not in ("read", "write"):
            raise ConfigError(f"auth.tokens[{i}].scope", f"unknown scope {token.scope!r} (want read or write)")
        if not re.fullmatch(r"[0-9a-f]{64}", token.sha256):
            raise ConfigError(f"auth.tokens[{i}].sha256", "want the 64 lowercase hex of the token's SHA-256")
    if config.auth.token is not None:
        validate_token_auth(config.auth.token)
    check_address(config.http.debug.addr, "http.debug.addr", allow_empty=True)
    if config.http.debug.prometheus.enabled and not config.http.debug.addr:
        raise ConfigError("http.debug.addr", "required when http.debug.prometheus.enabled is true")
    if not config.http.debug.prometheus.path.startswith("/"):
        raise ConfigError("http.debug.prometheus.path", "must start with /")
    if config.log.level.lower() not in ("debug", "info", "warn", "warning", "error"):
        raise ConfigError("log.level", f"unknown level {config.log.level!r} (want debug, info, warn or error)")
    if config.log.formatter not in ("text", "json"):
        raise ConfigError("log.formatter", f"unknown formatter {config.log.formatter!r} (want text or json)")


def validate_token_auth(token: TokenAuthConfig) -> None:
    """``auth.token``: what distribution requires of it, each check naming its key."""
    for key in ("realm", "service", "issuer"):
        if not getattr(token, key):
            raise ConfigError(f"auth.token.{key}", "required with token auth")
    if not token.rootcertbundle and not token.jwks:
        raise ConfigError("auth.token", "token auth needs rootcertbundle or jwks (the keys tokens are signed with)")
    for i, alg in enumerate(token.signingalgorithms):
        if alg not in SIGNING_ALGORITHMS:
            raise ConfigError(
                f"auth.token.signingalgorithms[{i}]",
                f"unsupported signing algorithm {alg!r} (want {', '.join(SIGNING_ALGORITHMS)})",
            )
    if not token.globalaccess.type or not token.globalaccess.name:
        raise ConfigError("auth.token.globalaccess", "type and name are required")
    if token.cachesize < 0:
        raise ConfigError("auth.token.cachesize", "must be >= 0 (0 = no cache)")


def to_dict(config: Any, *, mask: bool = True) -> Any:
    """A plain-data view of a config, with secrets masked (for --check-config).

    A duration is shown as it was written (``1m30s`` stays ``1m30s``); a default one
    in Go's notation (``30s``).
    """
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        return config
    hints = typing.get_type_hints(type(config), include_extras=True)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        if f.metadata.get("internal"):
            continue
        value = getattr(config, f.name)
        marks = getattr(hints[f.name], "__metadata__", ())
        if mask and SECRET in marks and value:
            out[f.name] = "*****"
        elif isinstance(value, WrittenDuration):
            out[f.name] = value.written  # as the file or the environment wrote it
        elif DURATION in marks and isinstance(value, float):
            out[f.name] = format_duration(value)
        elif isinstance(value, list):
            out[f.name] = [to_dict(v, mask=mask) for v in value]
        elif value is None:
            continue
        else:
            out[f.name] = to_dict(value, mask=mask)
    return out


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
    }.get(type(value), type(value).__name__) + (
        f" {value!r}" if isinstance(value, int | float | str) and len(repr(value)) < 60 else ""
    )


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
