"""Static bearer tokens (``auth.tokens``, ``auth.tokensfile``) with ``read`` / ``write`` scopes.

:class:`TokenAuthorizer` checks static bearer tokens: it reads
``authorization: Bearer <token>`` from the call's metadata, hashes the token with
SHA-256 and compares the hash with every configured one in constant time
(:func:`hmac.compare_digest`); the server never holds a token in clear. ``read``
tokens may call Stat, BatchStat and GetMetrics; ``write`` tokens also SetDescriptor
and Clear. :func:`check_scope` is the one check of a static token's scope (the
servicer's authorizer, :class:`.authorizer.Authorizer`, calls it too).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import yaml
from descriptor_client.errors import PermissionDeniedError, UnauthenticatedError
from descriptor_client.rpcs import RPCS

from ..config import AuthConfig, AuthToken, ConfigError, _build
from ..core import loggers
from ..rpc.context import invocation_metadata, set_principal
from .files import RELOAD_INTERVAL, file_signature

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

log = logging.getLogger(loggers.SERVER)


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


def check_scope(entry: _Token, method: str) -> None:
    """Raise PERMISSION_DENIED unless the static token ``entry`` may call ``method``.

    The scope a method needs comes from the one RPC table (:data:`METHOD_SCOPES`); a
    method not listed needs ``write`` (deny by default).
    """
    need = METHOD_SCOPES.get(method, WRITE)
    if need not in SCOPE_GRANTS.get(entry.scope, frozenset()):
        raise PermissionDeniedError(
            f"token {entry.name!r} has scope {entry.scope!r}; {method} needs {need!r}",
            metadata={"token": entry.name, "scope": entry.scope, "needs": need},
        )


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
        # every interval, on the call path: one stat) and on reload() (SIGHUP). A file
        # that no longer loads is logged and the tokens in force stay.
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
        check_scope(entry, method)
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


__all__ = [
    "METHOD_SCOPES",
    "SCOPE_GRANTS",
    "TokenAuthorizer",
    "bearer_token",
    "build_static",
    "check_scope",
    "check_token",
    "load_tokens",
    "token_hash",
]
