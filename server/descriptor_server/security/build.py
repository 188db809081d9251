"""The server's access control, built from the config: the authorizer, its audit, SIGHUP, file checks.

- :func:`build_authorizer` builds the servicer's ``authorizer`` hook
  (:class:`.authorizer.Authorizer`): static tokens, then the registry's own bearer
  tokens (``auth.token``), plus the audit log; :func:`audited` adds the audit to the
  servicer's ``observer``; :func:`install_reload` re-reads the token keys on SIGHUP.
  No token configured means authentication is off.
- :func:`check_files` reads the files the config names, as start will.
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Any

from ..config import AuthConfig, Config, ConfigError
from .authorizer import Authorizer, build
from .authorizer import audited as audit
from .keys import build_keyset
from .static import build_static, load_tokens
from .tls import ReloadingTLS, server_credentials

if TYPE_CHECKING:
    import asyncio

    from ..rpc.servicer import Observer


def build_authorizer(auth: AuthConfig) -> Authorizer:
    """The servicer's authorizer: static tokens, then registry tokens (``auth.token``).

    Always an object (it also feeds the audit log); with no token configured at all it
    allows every call.
    """
    return build(build_static(auth), auth.token)


def audited(observer: Observer | None, authorizer: Any) -> Observer | None:
    """The servicer's observer followed by the audit of ``authorizer`` (if it is ours)."""
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
        build_keyset(config.auth.token.rootcertbundle, config.auth.token.jwks)
    server_credentials(config.grpc.tls)


__all__ = ["audited", "build_authorizer", "check_files", "describe_auth", "install_reload"]
