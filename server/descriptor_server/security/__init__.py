"""Security: transport security, static tokens, registry tokens and the audit trail.

- :mod:`.tls`: TLS and mutual TLS for the gRPC listener (``grpc.tls``);
- :mod:`.static`: static bearer tokens (``auth.tokens``, ``auth.tokensfile``) and the
  one check of a static token's scope;
- registry-native authorization, distribution's bearer tokens scoped to repositories:
  :mod:`.jose` (compact JWS decoding, signatures, JWKs and key IDs, on
  ``cryptography``), :mod:`.keys` (the trusted keys: ``rootcertbundle``, ``jwks``,
  x5c chains, reloads), :mod:`.registrytokens` (distribution's validation of a token,
  and the cache of verified ones);
- :mod:`.authorizer`: the servicer's authorizer (static tokens, registry tokens, mTLS
  identity) and the audit log (``descriptor_server.audit``);
- :mod:`.build`: all of it built from the config, SIGHUP reloads, file checks.

Inside the package the imports go one way: ``build`` -> ``authorizer`` ->
``static``, ``registrytokens`` -> ``keys`` -> ``jose``; nothing here imports ``build``.
"""

from __future__ import annotations

from .build import audited, build_authorizer, check_files, describe_auth, install_reload
from .static import METHOD_SCOPES, TokenAuthorizer, bearer_token, build_static, load_tokens, token_hash
from .tls import server_credentials

__all__ = [
    "METHOD_SCOPES",
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
