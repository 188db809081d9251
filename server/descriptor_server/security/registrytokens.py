"""Registry bearer tokens, verified as distribution's ``auth.token`` verifies them.

:class:`RegistryTokenVerifier` turns a raw token into a :class:`Grant` (subject,
expiry, access set) or raises :class:`TokenInvalid` saying why. The steps and their
order are distribution's (``registry/auth/token``):

1. the token decodes as a compact JWS whose ``alg`` is in ``signingalgorithms``
   (default: distribution's list); ``alg: none`` and unknown critical headers are
   refused;
2. the signing key: the ``x5c`` header's chain verified to the root bundle; else an
   embedded ``jwk``, trusted only through its own x5c chain or when its ``kid`` is a
   trusted key (then the trusted key is used, not the embedded one); else ``kid``
   among the trusted keys (root certificates' keys and the JWKS);
3. the signature, with that key;
4. the claims decode with distribution's types (``exp``/``nbf``/``iat`` integers,
   ``aud`` a string or a list of strings, ``access`` a list of
   ``{type, name, actions}``);
5. ``iss`` is the configured issuer, ``aud`` contains the configured service;
6. ``exp`` + 60 s is not past and ``nbf`` - 60 s is not ahead (distribution's leeway).

Verified tokens are kept in a bounded LRU (``auth.token.cachesize``) until their
``exp`` (never past it; a token inside the leeway window is re-verified at every
call), and dropped when the keys are reloaded.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm

from .jose import ALGORITHMS, JoseError, PublicKey, parse_compact, public_key_from_jwk, verify_signature
from .keys import KeySet, TrustStore, verify_chain

#: distribution's clock-skew allowance on exp and nbf (``token.Leeway``).
LEEWAY = 60.0

#: Go's int64 range: a time claim outside it does not decode in distribution.
_INT64 = (-(2**63), 2**63 - 1)


class TokenInvalid(Exception):
    """The token is malformed or does not verify; the message says why."""


@dataclass(frozen=True, slots=True)
class Grant:
    """What a verified token grants."""

    subject: str
    expires: float
    #: (resource type, resource name) -> actions granted (``*`` grants every action).
    access: Mapping[tuple[str, str], frozenset[str]]
    generation: int

    def allows(self, kind: str, name: str, action: str) -> bool:
        actions = self.access.get((kind, name))
        return actions is not None and (action in actions or "*" in actions)


def _int_claim(claims: Mapping[str, Any], name: str) -> int:
    value = claims.get(name)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenInvalid(f"claim {name} is not a number")
    if isinstance(value, float) and not value.is_integer():
        raise TokenInvalid(f"claim {name} is not an integer")
    number = int(value)
    if not _INT64[0] <= number <= _INT64[1]:
        raise TokenInvalid(f"claim {name} is out of range")
    return number


def _str_claim(claims: Mapping[str, Any], name: str) -> str:
    value = claims.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TokenInvalid(f"claim {name} is not a string")
    return value


def _audience(claims: Mapping[str, Any]) -> list[str]:
    aud = claims.get("aud")
    if aud is None:
        return []
    if isinstance(aud, str):
        return [aud]
    if isinstance(aud, list) and all(isinstance(a, str) for a in aud):
        return list(aud)
    raise TokenInvalid("claim aud is not a string or a list of strings")


def access_set(entries: Any) -> dict[tuple[str, str], frozenset[str]]:
    """The ``access`` claim as (type, name) -> actions; a malformed entry refuses the token."""
    if entries is None:
        return {}
    if not isinstance(entries, list):
        raise TokenInvalid("claim access is not a list")
    merged: dict[tuple[str, str], set[str]] = {}
    for i, entry in enumerate(entries):
        if entry is None:
            continue  # Go decodes a null entry as a nil pointer
        if not isinstance(entry, dict):
            raise TokenInvalid(f"access[{i}] is not an object")
        kind, name, actions = entry.get("type", ""), entry.get("name", ""), entry.get("actions")
        if not isinstance(kind, str) or not isinstance(name, str):
            raise TokenInvalid(f"access[{i}] type and name must be strings")
        if actions is None:
            actions = []
        if not isinstance(actions, list) or not all(isinstance(a, str) for a in actions):
            raise TokenInvalid(f"access[{i}].actions is not a list of strings")
        merged.setdefault((kind, name), set()).update(actions)
    return {key: frozenset(actions) for key, actions in merged.items()}


class RegistryTokenVerifier:
    """Verifies registry tokens against one issuer, service and trust store; caches the results."""

    def __init__(
        self,
        *,
        issuer: str,
        service: str,
        trust: TrustStore,
        algorithms: Iterable[str] = (),
        cachesize: int = 10000,
        clock: Any = time.time,
    ) -> None:
        self.issuer = issuer
        self.service = service
        self.trust = trust
        self.algorithms = frozenset(algorithms or ALGORITHMS)
        self.cachesize = cachesize
        self.clock = clock
        self._cache: OrderedDict[str, Grant] = OrderedDict()

    def __len__(self) -> int:
        return len(self._cache)

    def peek(self, token: str) -> Grant | None:
        """The cached grant of ``token`` if it is still good (the hot path), else None."""
        grant = self._cache.get(token)
        if grant is None:
            return None
        if grant.generation != self.trust.current().generation or self.clock() >= grant.expires:
            return None
        self._cache.move_to_end(token)
        return grant

    def verify(self, token: str) -> Grant:
        """The grant of a valid token (from the cache while it lasts), or :class:`TokenInvalid`."""
        keys = self.trust.current()
        now = self.clock()
        cache = self._cache
        grant = cache.get(token)
        if grant is not None:
            if now < grant.expires and grant.generation == keys.generation:
                cache.move_to_end(token)
                return grant
            del cache[token]
        grant = self._verify(token, keys, now)
        if self.cachesize > 0 and now < grant.expires:
            cache[token] = grant
            if len(cache) > self.cachesize:
                cache.popitem(last=False)
        return grant

    def _signing_key(self, header: Mapping[str, Any], keys: KeySet) -> PublicKey:
        if "x5c" in header:
            return verify_chain(header["x5c"], keys)
        jwk = header.get("jwk")
        if jwk is not None:
            if not isinstance(jwk, dict):
                raise JoseError("jwk header is not an object")
            public_key_from_jwk(jwk)  # must be a well-formed key either way
            if "x5c" in jwk:
                return verify_chain(jwk["x5c"], keys)
            trusted = keys.trusted.get(jwk.get("kid") or "")
            if trusted is None:
                raise JoseError("untrusted jwk with no certificate chain")
            return trusted
        kid = header.get("kid")
        if isinstance(kid, str) and kid:
            trusted = keys.trusted.get(kid)
            if trusted is None:
                raise JoseError("token signed by an untrusted key ID")
            return trusted
        raise JoseError("token names no signing key (no x5c, jwk or kid)")

    def _verify(self, token: str, keys: KeySet, now: float) -> Grant:
        try:
            jws = parse_compact(token, self.algorithms)
            key = self._signing_key(jws.header, keys)
            verify_signature(jws, key)
        except JoseError as err:
            raise TokenInvalid(str(err)) from None
        except (ValueError, TypeError, OverflowError, UnsupportedAlgorithm) as err:  # key material cryptography refuses
            raise TokenInvalid(f"unusable signing key or signature: {type(err).__name__}") from None
        claims = jws.claims
        issuer, subject = _str_claim(claims, "iss"), _str_claim(claims, "sub")
        _str_claim(claims, "jti")
        audience = _audience(claims)
        exp, nbf = _int_claim(claims, "exp"), _int_claim(claims, "nbf")
        _int_claim(claims, "iat")
        access = access_set(claims.get("access"))
        if issuer != self.issuer:
            raise TokenInvalid("token from an untrusted issuer")
        if self.service not in audience:
            raise TokenInvalid("token intended for another audience")
        if now > exp + LEEWAY:
            raise TokenInvalid("token has expired")
        if now < nbf - LEEWAY:
            raise TokenInvalid("token is not valid yet (nbf)")
        return Grant(subject, float(exp), access, keys.generation)
