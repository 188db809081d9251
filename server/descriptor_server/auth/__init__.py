"""Registry-native authorization: distribution's bearer tokens, scoped to repositories.

- :mod:`.jose`: compact JWS decoding, signatures, JWKs and key IDs (on ``cryptography``);
- :mod:`.keys`: the trusted keys (``rootcertbundle``, ``jwks``), x5c chains, reloads;
- :mod:`.tokens`: distribution's validation of a token, and the cache of verified ones;
- :mod:`.authorizer`: the servicer's authorizer (static tokens, registry tokens, mTLS
  identity) and the audit log (``descriptor_server.audit``).
"""
