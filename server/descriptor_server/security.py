"""Transport security and access control: TLS / mTLS and scoped bearer tokens.

- :func:`server_credentials` builds gRPC server credentials from ``grpc.tls``:
  ``certificate`` + ``key`` turn on TLS; ``clientcas`` (one or more PEM files) turns on
  mutual TLS, where a client certificate signed by one of those CAs is required.
- :class:`TokenAuthorizer` checks static bearer tokens: it reads
  ``authorization: Bearer <token>`` from the call's metadata, hashes the token with
  SHA-256 and compares the hash with every configured one in constant time
  (:func:`hmac.compare_digest`); the server never holds a token in clear. ``read``
  tokens may call Stat, BatchStat and GetMetrics; ``write`` tokens also SetDescriptor
  and Clear.
- :func:`build_authorizer` builds the servicer's ``authorizer`` hook
  (:class:`descriptor_server.auth.Authorizer`): static tokens, then the registry's own
  bearer tokens (``auth.token``, see :mod:`descriptor_server.auth`), plus the audit
  log; :func:`audited` adds the audit to the servicer's ``observer``;
  :func:`install_reload` re-reads the token keys, the static tokens file and the TLS
  files on SIGHUP. No token configured means authentication is off.
- Rotation without a restart: :class:`ReloadingTLS` serves ``grpc.tls`` through gRPC's
  dynamic server credentials, and :class:`TokenAuthorizer` keeps ``auth.tokensfile``'s
  tokens; both re-read their files when they change (checked at most every
  :data:`RELOAD_INTERVAL` seconds: at a TLS handshake for the certificate, key and
  client CAs, on the call path for the tokens; one ``stat`` per file) and on SIGHUP.
  A file that no longer loads (unreadable, not PEM, a key that does not match the
  certificate, a token list that does not parse) is logged and what was loaded before
  stays in force; it is tried again when it changes. Connections already open keep the
  certificate of their handshake.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import yaml
from descriptor_client.errors import PermissionDeniedError, UnauthenticatedError
from descriptor_client.rpcs import RPCS

from .config import AuthConfig, AuthToken, Config, ConfigError, GrpcTLSConfig, _build
from .interceptor import invocation_metadata
from .principal import set_principal

if TYPE_CHECKING:
    import asyncio

    from .auth.authorizer import Authorizer
    from .service import Observer

READ = "read"
WRITE = "write"

#: The scope each RPC needs of a static token, from the one RPC table. A method not
#: listed needs ``write`` (deny by default).
METHOD_SCOPES: dict[str, str] = {name: rpc.access for name, rpc in RPCS.items()}

#: What each scope grants.
SCOPE_GRANTS: dict[str, frozenset[str]] = {
    READ: frozenset({READ}),
    WRITE: frozenset({READ, WRITE}),
}

_BEARER = "bearer"

#: How often, at most, the TLS files and the static tokens file are checked for a change
#: (the default of ``auth.token.reloadinterval`` too). SIGHUP re-reads them at once.
RELOAD_INTERVAL = 10.0

log = logging.getLogger("descriptor_server")


def file_signature(path: str) -> tuple[int, int, int] | None:
    """What changes when a file is replaced or rewritten (inode, size, mtime), or None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


# -- TLS ----------------------------------------------------------------------------


def _read_pem(path: str, key: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise ConfigError(key, f"cannot read {path}: {err.strerror or err}") from None
    if b"-----BEGIN " not in data:
        raise ConfigError(key, f"{path} holds no PEM data")
    return data


def server_credentials(tls: GrpcTLSConfig) -> grpc.ServerCredentials | None:
    """Server credentials for ``grpc.tls``, or None when TLS is off.

    With ``clientcas`` the server requires a client certificate and verifies it
    against those CAs (mutual TLS); without, any client that trusts the server's
    certificate may connect.
    """
    if not tls.certificate:
        return None
    chain = _read_pem(tls.certificate, "grpc.tls.certificate")
    key = _read_pem(tls.key, "grpc.tls.key")
    roots = b"".join(
        _read_pem(path, f"grpc.tls.clientcas[{i}]").rstrip(b"\n") + b"\n" for i, path in enumerate(tls.clientcas)
    )
    check_key_pair(chain, key, tls)
    try:
        return grpc.ssl_server_credentials(
            [(key, chain)],
            root_certificates=roots or None,
            require_client_auth=bool(roots),
        )
    except Exception as err:  # grpcio raises plain errors for unusable key material
        raise ConfigError("grpc.tls", f"unusable certificate or key: {err}") from None


def _read_tls(tls: GrpcTLSConfig) -> tuple[bytes, bytes, bytes]:
    """(certificate chain, key, client CAs) from ``grpc.tls``'s files, the pair checked."""
    chain = _read_pem(tls.certificate, "grpc.tls.certificate")
    key = _read_pem(tls.key, "grpc.tls.key")
    roots = b"".join(
        _read_pem(path, f"grpc.tls.clientcas[{i}]").rstrip(b"\n") + b"\n" for i, path in enumerate(tls.clientcas)
    )
    check_key_pair(chain, key, tls)
    return chain, key, roots


def check_key_pair(chain: bytes, key: bytes, tls: GrpcTLSConfig) -> None:
    """Refuse a key that is not the certificate's (a rotation caught half-way, a wrong file)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        cert = x509.load_pem_x509_certificate(chain)
    except ValueError as err:
        raise ConfigError("grpc.tls.certificate", f"{tls.certificate}: not a PEM certificate ({err})") from None
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError) as err:
        raise ConfigError("grpc.tls.key", f"{tls.key}: not an unencrypted PEM private key ({err})") from None
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if private.public_key().public_bytes(*raw) != cert.public_key().public_bytes(*raw):
        raise ConfigError("grpc.tls.key", f"{tls.key} is not the key of {tls.certificate}")


class ReloadingTLS:
    """``grpc.tls`` as gRPC dynamic server credentials: the certificate, key and client CAs
    re-read when their files change and on :meth:`reload` (SIGHUP).

    gRPC asks :meth:`_fetch` at every new TLS handshake; it answers a new configuration
    once after a reload (gRPC keeps using it), else None (keep the current one). The
    files are checked for a change there, at most every ``interval`` seconds. Whether
    client certificates are required is fixed at start (``clientcas`` empty or not).
    """

    def __init__(self, tls: GrpcTLSConfig, *, interval: float = RELOAD_INTERVAL) -> None:
        self.tls = tls
        self.interval = interval
        self._files = [tls.certificate, tls.key, *tls.clientcas]
        self._stamps = [file_signature(p) for p in self._files]
        self._pending: Any = None
        self._lock = threading.Lock()
        self._next_check = time.monotonic() + interval
        self.reloads = 0
        self.credentials = grpc.dynamic_ssl_server_credentials(
            self._configuration(),
            self._fetch,
            require_client_authentication=bool(tls.clientcas),
        )

    def _configuration(self) -> Any:
        chain, key, roots = _read_tls(self.tls)
        try:
            return grpc.ssl_server_certificate_configuration([(key, chain)], root_certificates=roots or None)
        except Exception as err:  # grpcio raises plain errors for unusable key material
            raise ConfigError("grpc.tls", f"unusable certificate or key: {err}") from None

    def _fetch(self) -> Any:
        if self.interval > 0 and time.monotonic() >= self._next_check:
            self._next_check = time.monotonic() + self.interval
            if [file_signature(p) for p in self._files] != self._stamps:
                self.reload("files changed")
        with self._lock:
            pending, self._pending = self._pending, None
        return pending

    def reload(self, why: str = "SIGHUP") -> bool:
        """Re-read the files now; True when new handshakes will use what they hold."""
        with self._lock:
            stamps = [file_signature(p) for p in self._files]
            try:
                configuration = self._configuration()
            except ConfigError as err:
                self._stamps = stamps  # not tried again until a file changes again
                log.error("TLS certificate not reloaded (%s), keeping the previous one: %s", why, err)
                return False
            self._stamps = stamps
            self._pending = configuration
            self.reloads += 1
        log.info("TLS certificate, key and client CAs reloaded (%s): %s", why, self.tls.certificate)
        return True


# -- tokens ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Token:
    name: str
    scope: str
    digest: bytes  # SHA-256 of the token


def token_hash(token: str) -> str:
    """The hex SHA-256 of a token: what ``auth.tokens[].sha256`` holds."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def load_tokens(auth: AuthConfig) -> list[AuthToken]:
    """The configured tokens: ``auth.tokens`` plus those in ``auth.tokensfile``.

    The file holds the same list as ``auth.tokens`` (a YAML or JSON list of
    ``{name, scope, sha256}``), or a mapping with a ``tokens`` key holding it.
    """
    tokens = list(auth.tokens)
    if auth.tokensfile:
        key = "auth.tokensfile"
        try:
            with open(auth.tokensfile, encoding="utf-8") as f:
                data: Any = yaml.safe_load(f)
        except OSError as err:
            raise ConfigError(key, f"cannot read {auth.tokensfile}: {err.strerror or err}") from None
        except yaml.YAMLError as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(key, f"{auth.tokensfile} is not valid YAML: {first}") from None
        if isinstance(data, dict) and set(data) == {"tokens"}:
            data = data["tokens"]
        if data is None:
            data = []
        if not isinstance(data, list):
            raise ConfigError(key, f"{auth.tokensfile} must hold a list of {{name, scope, sha256}}")
        for i, item in enumerate(data):
            path = f"{key}[{i}]"
            token: AuthToken = _build(AuthToken, item, path)
            check_token(token, path)
            tokens.append(token)
    return tokens


def check_token(token: AuthToken, path: str) -> None:
    """Refuse a token entry with an unknown scope or a hash that is not SHA-256 hex."""
    if token.scope not in SCOPE_GRANTS:
        raise ConfigError(f"{path}.scope", f"unknown scope {token.scope!r} (want read or write)")
    sha = token.sha256
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ConfigError(f"{path}.sha256", "want the 64 lowercase hex of the token's SHA-256")


def bearer_token(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The token of the first ``authorization: Bearer <token>`` entry, if any."""
    for key, value in metadata or ():
        if key.lower() != "authorization":
            continue
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        scheme, _, token = text.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != _BEARER or not token:
            return None
        return token
    return None


class TokenAuthorizer:
    """The servicer's ``authorizer``: bearer tokens with ``read`` / ``write`` scopes.

    Missing, malformed or unknown token: UNAUTHENTICATED. A known token whose scope
    does not grant the method's: PERMISSION_DENIED.
    """

    def __init__(
        self, tokens: Sequence[AuthToken], *, auth: AuthConfig | None = None, interval: float = RELOAD_INTERVAL
    ) -> None:
        self._tokens = self._entries(tokens)
        # With auth.tokensfile: its tokens are re-read when it changes (checked at most
        # every interval, on the call path) and on reload() (SIGHUP).
        self.auth = auth if auth is not None and auth.tokensfile else None
        self.interval = interval
        self._stamp = file_signature(self.auth.tokensfile) if self.auth is not None else None
        self._next_check = time.monotonic() + interval
        self._lock = threading.Lock()

    @staticmethod
    def _entries(tokens: Sequence[AuthToken]) -> list[_Token]:
        return [_Token(t.name, t.scope, bytes.fromhex(t.sha256)) for t in tokens]

    def reload(self, why: str = "SIGHUP") -> bool:
        """Re-read ``auth.tokensfile`` now; True when its tokens are in force."""
        if self.auth is None:
            return False
        with self._lock:
            self._stamp = file_signature(self.auth.tokensfile)  # a broken file: tried again when it changes
            try:
                tokens = load_tokens(self.auth)
                if not tokens:
                    raise ConfigError("auth.tokensfile", f"{self.auth.tokensfile} holds no token")
            except ConfigError as err:
                log.error("static tokens not reloaded (%s), keeping the previous ones: %s", why, err)
                return False
            self._tokens = self._entries(tokens)
        log.info("static tokens reloaded (%s): %d configured", why, len(tokens))
        return True

    def _check_file(self) -> None:
        now = time.monotonic()
        if now >= self._next_check and self.auth is not None and self.interval > 0:
            self._next_check = now + self.interval
            if file_signature(self.auth.tokensfile) != self._stamp:
                self.reload("file changed")

    def __len__(self) -> int:
        return len(self._tokens)

    def match(self, token: str) -> _Token | None:
        """The configured entry whose hash is the token's, compared in constant time.

        Every entry is compared (no early exit), so the time taken does not tell
        which entry, if any, matched.
        """
        if self.auth is not None:
            self._check_file()
        presented = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        found: _Token | None = None
        for entry in self._tokens:
            if hmac.compare_digest(presented, entry.digest) and found is None:
                found = entry
        return found

    def authorize(self, method: str, metadata: Iterable[tuple[str, Any]] | None) -> str:
        """The name of the token allowed to call ``method``, or raise the contract error."""
        token = bearer_token(metadata)
        if token is None:
            raise UnauthenticatedError("missing bearer token (send authorization: Bearer <token>)")
        entry = self.match(token)
        if entry is None:
            raise UnauthenticatedError("unknown bearer token")
        need = METHOD_SCOPES.get(method, WRITE)
        if need not in SCOPE_GRANTS.get(entry.scope, frozenset()):
            raise PermissionDeniedError(
                f"token {entry.name!r} has scope {entry.scope!r}; {method} needs {need!r}",
                metadata={"token": entry.name, "scope": entry.scope, "needs": need},
            )
        return entry.name

    def __call__(self, method: str, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        set_principal(self.authorize(method, invocation_metadata(context, method)))


def build_static(auth: AuthConfig) -> TokenAuthorizer | None:
    """The static-token authorizer for ``auth``, or None when no static token is configured."""
    tokens = load_tokens(auth)
    if not tokens:
        if auth.tokensfile:
            raise ConfigError("auth.tokensfile", f"{auth.tokensfile} holds no token")
        return None
    return TokenAuthorizer(tokens, auth=auth)


def build_authorizer(auth: AuthConfig) -> Authorizer:
    """The servicer's authorizer: static tokens, then registry tokens (``auth.token``).

    Always an object (it also feeds the audit log); with no token configured at all it
    allows every call.
    """
    from .auth.authorizer import build

    return build(build_static(auth), auth.token)


def audited(observer: Observer | None, authorizer: Any) -> Observer | None:
    """The servicer's observer followed by the audit of ``authorizer`` (if it is ours)."""
    from .auth.authorizer import Authorizer
    from .auth.authorizer import audited as audit

    if not isinstance(authorizer, Authorizer):
        return observer
    return audit(observer, authorizer)


def describe_auth(authorizer: Any) -> str:
    """For the start log line: which token controls are on."""
    describe = getattr(authorizer, "describe", None)
    if describe is not None:
        return str(describe())
    return f"bearer tokens on ({len(authorizer)} configured)" if authorizer is not None else "bearer tokens off"


def install_reload(loop: asyncio.AbstractEventLoop, authorizer: Any, tls: ReloadingTLS | None = None) -> None:
    """SIGHUP re-reads, without a restart, the registry-token keys (root bundle, JWKS), the
    static tokens file and the TLS certificate, key and client CAs."""
    import signal

    reloads = [r for r in (getattr(authorizer, "reload", None), tls.reload if tls is not None else None) if r]

    def reload() -> None:
        for each in reloads:
            each()

    if reloads:
        loop.add_signal_handler(signal.SIGHUP, reload)


def check_files(config: Config) -> None:
    """Read the files the config names (token list, TLS material), as start will.

    Lets ``--check-config`` and a multi-worker start refuse a bad file up front, with
    one line naming the key.
    """
    if config.auth.tokensfile and not load_tokens(config.auth):
        raise ConfigError("auth.tokensfile", f"{config.auth.tokensfile} holds no token")
    if config.auth.token is not None:
        from .auth.keys import build_keyset

        build_keyset(config.auth.token.rootcertbundle, config.auth.token.jwks)
    server_credentials(config.grpc.tls)


__all__ = [
    "METHOD_SCOPES",
    "RELOAD_INTERVAL",
    "ReloadingTLS",
    "check_key_pair",
    "file_signature",
    "TokenAuthorizer",
    "audited",
    "bearer_token",
    "build_authorizer",
    "build_static",
    "check_files",
    "describe_auth",
    "install_reload",
    "load_tokens",
    "server_credentials",
    "token_hash",
]
