"""Reading a configuration: YAML scalars as written, ``DESCRIPTOR_*`` overrides, 2.x keys, secrets."""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Union

import yaml

from .durations import WrittenDuration, parse_duration
from .error import ConfigError, ConfigErrors, _first_line, _kind
from .sections import DURATION, ENV_PREFIX, OVERRIDABLE, SECRET, Config
from .validation import validate


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
            raise ConfigError("", f"config file {path} is not valid YAML{_where(err)}: {_yaml_problem(err)}") from None
        data = _resolved(data)
        if data is None:
            data = {}
    if not isinstance(data, dict):
        raise ConfigError("", "the config file must hold a mapping at the top level")
    # The file's 2.x keys take their 3.x names first, so that an override of either name
    # overrides them (the environment wins over the file, whatever names each uses).
    mapped, moved = map_legacy_keys(data)
    data = dict(mapped)
    ignored = drop_distribution_keys(data)
    variables: dict[str, str] = {}
    moved += apply_environment(data, os.environ if environ is None else environ, variables)
    try:
        config = from_dict(data, deprecated=moved)
    except ConfigErrors as errs:
        raise ConfigErrors([_from_variable(e, variables) for e in errs.errors]) from None
    except ConfigError as err:
        raise _from_variable(err, variables) from None
    return dataclasses.replace(config, ignored=tuple(ignored)) if ignored else config


def _from_variable(err: ConfigError, variables: Mapping[str, str]) -> ConfigError:
    """``err`` naming the environment variable that set its key, if one did."""
    for key, name in variables.items():
        if err.key == key or err.key.startswith((key + ".", key + "[")):
            return ConfigError(err.key, f"{err.reason} (set by {name})")
    return err


def _where(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    if mark is None:
        return ""
    return f" at line {mark.line + 1}, column {mark.column + 1}"


def _yaml_problem(err: yaml.YAMLError) -> str:
    problem = getattr(err, "problem", None)
    context = getattr(err, "context", None)
    if problem:
        return f"{context}, {problem}" if context else str(problem)
    return _first_line(err)


#: Keys of distribution's registry configuration that this service has no use for:
#: accepted (and named in one warning at start) so that one file can serve both.
#: ``http.debug`` and the shared sections' own keys are this service's.
DISTRIBUTION_ONLY: dict[str, frozenset[str] | None] = {
    "version": None,
    "health": None,
    "notifications": None,
    "reporting": None,
    "middleware": None,
    "proxy": None,
    "validation": None,
    "compatibility": None,
    "catalog": None,
    "loglevel": None,
    "http": frozenset(
        ("addr", "net", "prefix", "host", "secret", "relativeurls", "draintimeout", "tls", "headers", "http2", "h2c")
    ),
    "log": frozenset(("accesslog", "reportcaller", "hooks")),
    "storage": frozenset(
        ("maintenance", "redirect", "tag", "inmemory", "azure", "gcs", "swift", "oss", "s3-aws", "cloudfront")
    ),
    "auth": frozenset(("htpasswd", "silly")),
}


def drop_distribution_keys(data: dict[str, Any]) -> list[str]:
    """Remove (in place) the keys of a distribution config this service does not use;
    their dotted names, in order."""
    dropped: list[str] = []
    for top, subkeys in DISTRIBUTION_ONLY.items():
        if top not in data:
            continue
        if subkeys is None:
            del data[top]
            dropped.append(top)
            continue
        section = _resolved(data[top])
        if not isinstance(section, dict):
            continue
        kept = {}
        for key, value in section.items():
            if key in subkeys:
                dropped.append(f"{top}.{key}")
            else:
                kept[key] = value
        if len(kept) != len(section):
            data[top] = kept
    return dropped


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


def from_dict(data: Mapping[str, Any], *, deprecated: Sequence[tuple[str, str]] = ()) -> Config:
    """Build and validate a Config from a plain mapping (``…file`` secrets read here).

    ``deprecated``: the 2.x keys already moved to their 3.x names (by :func:`load`).
    """
    data, more = map_legacy_keys(data)
    deprecated = [*deprecated, *more]
    try:
        config: Config = _build(Config, data, "")
        if deprecated:
            config = dataclasses.replace(config, deprecated=tuple(deprecated))
        config = read_secret_files(config)
        validate(config)
    except ConfigError as err:
        raise as_written(err, deprecated) from None
    return config


def as_written(err: ConfigError, deprecated: Sequence[tuple[str, str]]) -> ConfigError:
    """``err`` naming the key as the config wrote it (a 2.x name read as its 3.x key)."""
    if isinstance(err, ConfigErrors):
        return ConfigErrors([as_written(e, deprecated) for e in err.errors])
    for written, moved in deprecated:
        if err.key == moved or err.key.startswith((moved + ".", moved + "[")):
            rest = err.key[len(moved) :]
            if written == "redis.addr" and rest == "[0]":
                rest = ""  # 2.x's addr is the one address
            return ConfigError(written + rest, err.reason)
    return err


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


def apply_environment(
    data: dict[str, Any], environ: Mapping[str, str], variables: dict[str, str] | None = None
) -> list[tuple[str, str]]:
    """Apply ``DESCRIPTOR_*`` overrides in place; the distribution 2.x names they used.

    The override of a string-typed key is the variable's value verbatim; any other
    value is parsed as YAML (scalars kept as written, as in the file). A 2.x Redis name
    (``DESCRIPTOR_REDIS_ADDR``, ``DESCRIPTOR_REDIS_POOL_MAXACTIVE``...) sets its 3.x key;
    setting both names of one key is a config error naming both variables.
    """
    moved: list[tuple[str, str]] = []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX):
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("_")
        if parts[0] not in OVERRIDABLE:
            continue
        key = ".".join(parts)
        if not all(parts):
            raise ConfigError(key, f"{name} has an empty part (keys are joined by single underscores)")
        legacy = tuple(parts[1:]) if parts[0] == "redis" else ()
        value: Any
        if legacy in LEGACY_REDIS_KEYS:
            new = LEGACY_REDIS_KEYS[legacy]
            other = f"{ENV_PREFIX}REDIS_{new.upper()}"
            if other in environ:
                raise ConfigError(key, f"{name} (distribution 2.x) and {other} are both set (keep {other})")
            moved.append((key, f"redis.{new}"))
            parts = ["redis", new]
        if legacy == ("addr",) or is_text(hint_at(parts)):
            value = environ[name]  # 2.x's addr was a string: one address, verbatim
        else:
            try:
                value = compose(environ[name])
            except yaml.YAMLError as err:
                raise ConfigError(key, f"{name} is not valid YAML: {_yaml_problem(err)}") from None
        node = data
        for i, part in enumerate(parts[:-1]):
            child = _resolved(node.get(part))
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(".".join(parts[: i + 1]), f"{name} sets a key under a value that is not a mapping")
            node = child
        if legacy in LEGACY_REDIS_KEYS:
            check_legacy_value(key, value)
        node[parts[-1]] = value
        if variables is not None:
            variables[".".join(parts)] = name
    return moved


def _build(cls: type[Any], data: Any, path: str) -> Any:
    data = _resolved(data)
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(path, f"want a mapping, got {_kind(data)}")
    hints = typing.get_type_hints(cls, include_extras=True)
    names = [f.name for f in dataclasses.fields(cls) if not f.metadata.get("internal")]
    kwargs: dict[str, Any] = {}
    errors: list[ConfigError] = []  # every problem of the tree, reported together
    for key, value in data.items():
        sub = f"{path}.{key}" if path else str(key)
        if not isinstance(key, str) or key not in names:
            errors.append(ConfigError(sub, unknown_key(key, names, path)))
            continue
        try:
            kwargs[key] = _convert(hints[key], value, sub)
        except ConfigErrors as errs:
            errors.extend(errs.errors)
        except ConfigError as err:
            errors.append(err)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ConfigErrors(errors)
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
        return f"unknown key (distribution's redis.{text} is not supported here; see docs/configuration.md)"
    lowered = {name.lower(): name for name in names}
    match = lowered.get(text.lower().replace("_", "").replace("-", ""))
    if match is None:
        # Only a close match helps (a looser one suggested auth for health): one edit
        # (a transposition counts as one) per four letters, or a high similarity.
        word = text.lower()
        near = [n for n in lowered if _edits(word, n) <= max(1, len(n) // 4)]
        close = near or difflib.get_close_matches(word, list(lowered), n=1, cutoff=0.8)
        match = lowered[min(close, key=lambda n: _edits(word, n))] if close else None
    if match is None:
        return "unknown key"
    return f"unknown key (did you mean {path}.{match}?)" if path else f"unknown key (did you mean {match}?)"


def _edits(a: str, b: str) -> int:
    """Edits from ``a`` to ``b``: insertions, deletions, substitutions, transpositions."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[len(b)]


#: distribution 2.x's Redis keys, read as the 3.x keys (go-redis's names) they became.
LEGACY_REDIS_KEYS = {
    ("addr",): "addrs",
    ("pool", "maxidle"): "maxidleconns",
    ("pool", "maxactive"): "poolsize",
    ("pool", "idletimeout"): "connmaxidletime",
}


#: 2.x values whose meaning the 3.x key does not have (redigo's pool, not go-redis's).
_LEGACY_ZERO = {
    "redis.pool.maxidle": "0 kept no idle connection in distribution 2.x (redigo), but redis.maxidleconns: 0"
    " means no limit; set redis.maxidleconns to the number of idle connections to keep",
    "redis.pool.maxactive": "0 meant no limit in distribution 2.x (redigo); redis.poolsize needs a number of"
    " connections (>= 1); set redis.poolsize",
}


def check_legacy_value(path: str, value: Any) -> None:
    """Refuse a 2.x value that would mean something else under its 3.x name."""
    resolved = _resolved(value)
    if path in _LEGACY_ZERO and isinstance(resolved, int) and not isinstance(resolved, bool) and resolved == 0:
        raise ConfigError(path, _LEGACY_ZERO[path])


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
        check_legacy_value(old_path, value)
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
