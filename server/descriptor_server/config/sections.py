"""The configuration's sections: one small frozen dataclass each, defaults as shipped."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

#: Markers for fields that need more than their Python type says.
DURATION = "duration"
SECRET = "secret"

Duration = Annotated[float, DURATION]
Secret = Annotated[str, SECRET]

#: Metadata of a Config field that is not a key (filled in by loading, never read from YAML).
INTERNAL = {"internal": True}

OVERRIDABLE = ("storage", "redis", "grpc", "http", "log", "auth")
ENV_PREFIX = "DESCRIPTOR_"


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
    #: Check a cached entry against the backend again on its first hit after this long (0 = never;
    #: on by default: it bounds how long a blob removed behind the cache's back is answered).
    revalidate: Duration = 60.0
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
    #: The near cache's lease in Redis: it answers only while it holds one (renewed every
    #: third of it), and a Clear waits at most this long for a process that stopped.
    lease: Duration = 3.0


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
    #: How long a call may wait for its request message (0 = no bound).
    requesttimeout: Duration = 10.0
    #: Connections open at once on the port (0 = no bound).
    maxconnections: int = 1000
    #: Calls open at once on one connection (HTTP/2 MAX_CONCURRENT_STREAMS; 0 = grpc's own, unbounded).
    maxstreams: int = 100
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
    #: An HTTP health path for load balancers that cannot speak gRPC ("" = none).
    healthpath: str = "/healthz"


@dataclass(frozen=True)
class HttpConfig:
    debug: DebugConfig = field(default_factory=DebugConfig)


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    formatter: str = "text"
    #: Fixed fields added to every log line (distribution's ``log.fields``); values kept as text.
    fields: dict[str, str] = field(default_factory=dict)
    #: The audit lines (descriptor_server.audit): auto (on when any token auth is
    #: configured), on, or off.
    audit: str = "auto"


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
    #: Keys of a distribution registry's config that this service has no use for (ignored).
    ignored: tuple[str, ...] = field(default=(), metadata=INTERNAL, compare=False)

    def deprecation_warning(self) -> str | None:
        """The one warning for the 2.x keys this config used and the distribution keys it
        ignored (None when there are none)."""
        parts = []
        if self.deprecated:
            pairs = ", ".join(f"{old} -> {new}" for old, new in self.deprecated)
            parts.append(
                f"config: distribution 2.x keys read as their 3.x names ({pairs});"
                " rename them: the 2.x names are deprecated"
            )
        if self.ignored:
            parts.append(
                f"config: keys of a distribution registry's config ignored ({', '.join(self.ignored)}):"
                " this service has no use for them"
            )
        return " ".join(parts) or None
