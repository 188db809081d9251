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

The package: :mod:`.sections` (the dataclasses), :mod:`.loading` (YAML, overrides,
distribution 2.x keys, ``…file`` secrets), :mod:`.validation`, :mod:`.durations`,
:mod:`.view` (what ``--check-config`` prints) and :mod:`.error`.
"""

from __future__ import annotations

from .durations import (
    WrittenDuration,
    format_duration,
    parse_duration,
)
from .error import (
    ConfigError,
)
from .loading import (
    DISTRIBUTION_REDIS_ONLY,
    LEGACY_REDIS_KEYS,
    Scalar,
    _build,
    apply_environment,
    as_written,
    compose,
    from_dict,
    hint_at,
    is_text,
    load,
    map_legacy_keys,
    read_secret,
    read_secret_files,
    unknown_key,
)
from .sections import (
    BACKENDS,
    CACHES,
    DURATION,
    ENV_PREFIX,
    INTERNAL,
    OVERRIDABLE,
    SECRET,
    SIGNING_ALGORITHMS,
    AuthConfig,
    AuthToken,
    CacheConfig,
    ClientTLSConfig,
    Config,
    DebugConfig,
    DeleteConfig,
    DescriptorServiceBackendConfig,
    Duration,
    FilesystemConfig,
    GrpcConfig,
    GrpcKeepaliveConfig,
    GrpcTLSConfig,
    HttpConfig,
    LogConfig,
    PrometheusConfig,
    RedisConfig,
    RedisNearCacheConfig,
    RedisTLSConfig,
    RegistryBackendConfig,
    S3Config,
    Secret,
    StorageConfig,
    TokenAccessConfig,
    TokenAuthConfig,
)
from .validation import (
    check_address,
    check_workers,
    validate,
    validate_redis,
    validate_token_auth,
)
from .view import (
    to_dict,
)

__all__ = [
    "as_written",
    "AuthConfig",
    "AuthToken",
    "BACKENDS",
    "CACHES",
    "CacheConfig",
    "ClientTLSConfig",
    "Config",
    "ConfigError",
    "DISTRIBUTION_REDIS_ONLY",
    "DURATION",
    "DebugConfig",
    "DeleteConfig",
    "DescriptorServiceBackendConfig",
    "Duration",
    "ENV_PREFIX",
    "FilesystemConfig",
    "GrpcConfig",
    "GrpcKeepaliveConfig",
    "GrpcTLSConfig",
    "HttpConfig",
    "INTERNAL",
    "LEGACY_REDIS_KEYS",
    "LogConfig",
    "OVERRIDABLE",
    "PrometheusConfig",
    "RedisConfig",
    "RedisNearCacheConfig",
    "RedisTLSConfig",
    "RegistryBackendConfig",
    "S3Config",
    "SECRET",
    "SIGNING_ALGORITHMS",
    "Scalar",
    "Secret",
    "StorageConfig",
    "TokenAccessConfig",
    "TokenAuthConfig",
    "WrittenDuration",
    "_build",
    "apply_environment",
    "check_address",
    "check_workers",
    "compose",
    "format_duration",
    "from_dict",
    "hint_at",
    "is_text",
    "load",
    "map_legacy_keys",
    "parse_duration",
    "read_secret",
    "read_secret_files",
    "to_dict",
    "unknown_key",
    "validate",
    "validate_redis",
    "validate_token_auth",
]
