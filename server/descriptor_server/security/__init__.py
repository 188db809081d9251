"""Security: transport security, static tokens, registry tokens and the audit trail.

- :mod:`.tls`: TLS and mutual TLS for the gRPC listener (``grpc.tls``), re-read when
  the files change and on SIGHUP (:class:`.tls.ReloadingTLS`);
- :mod:`.static`: static bearer tokens (``auth.tokens``, ``auth.tokensfile``, the file
  re-read likewise) and the one check of a static token's scope;
- :mod:`.files`: how a changed file is told, and how often the files are checked;
- registry-native authorization, distribution's bearer tokens scoped to repositories:
  :mod:`.jose` (compact JWS decoding, signatures, JWKs and key IDs, on
  ``cryptography``), :mod:`.keys` (the trusted keys: ``rootcertbundle``, ``jwks``,
  x5c chains, reloads), :mod:`.registrytokens` (distribution's validation of a token,
  and the cache of verified ones);
- :mod:`.authorizer`: the servicer's authorizer (static tokens, registry tokens, mTLS
  identity) and the audit log (``descriptor_server.audit``);
- :mod:`.build`: all of it built from the config, SIGHUP reloads, file checks.

Inside the package the imports go one way: ``build`` -> ``authorizer`` ->
``static``, ``registrytokens`` -> ``keys`` -> ``jose``; ``static`` and ``tls`` ->
``files``; nothing here imports ``build``.
"""

from __future__ import annotations

from .build import audited, build_authorizer, check_files, describe_auth, install_reload
from .files import RELOAD_INTERVAL, file_signature
from .static import METHOD_SCOPES, TokenAuthorizer, bearer_token, build_static, load_tokens, token_hash
from .tls import ReloadingTLS, check_key_pair, server_credentials

__all__ = [
    "METHOD_SCOPES",
    "RELOAD_INTERVAL",
    "ReloadingTLS",
    "TokenAuthorizer",
    "audited",
    "bearer_token",
    "check_key_pair",
    "build_authorizer",
    "build_static",
    "check_files",
    "describe_auth",
    "file_signature",
    "install_reload",
    "load_tokens",
    "server_credentials",
    "token_hash",
]
