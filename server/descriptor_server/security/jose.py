"""The JOSE pieces distribution's token auth needs, on top of ``cryptography``.

A registry token is a JWS in compact serialization (``header.payload.signature``,
each base64url). This module splits and decodes it (bounded: a token longer than
:data:`MAX_TOKEN_BYTES` is refused before any decoding), verifies a signature with a
public key for one of distribution's algorithms, reads public keys from JWKs, and
computes the two key IDs distribution has used for trusted keys: the RFC 7638 JWK
thumbprint (distribution v3) and libtrust's key ID (distribution 2.x).

Symmetric algorithms (``HS*``) are named by distribution's default list, but a
registry verifies with public keys only, so an ``HS*`` token can never verify (as in
distribution, whose HMAC verifier refuses a public key). ``none`` is never accepted.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from ..config import SIGNING_ALGORITHMS

#: A public key a token may be signed with.
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey

#: Longest token parsed at all (grpc.maxmetadatasize usually refuses longer first).
MAX_TOKEN_BYTES = 256 * 1024

#: distribution's algorithms, in its default order (``signingalgorithms`` unset).
ALGORITHMS: tuple[str, ...] = SIGNING_ALGORITHMS

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
#: ES algorithm -> (curve name, bytes per coordinate).
_CURVES: dict[str, tuple[str, int]] = {
    "ES256": ("secp256r1", 32),
    "ES384": ("secp384r1", 48),
    "ES512": ("secp521r1", 66),
}
_JWK_CURVES: dict[str, ec.EllipticCurve] = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}
_CURVE_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}


class JoseError(Exception):
    """The token is malformed or does not verify; the message says why (never echoes the token)."""


def b64url_decode(part: str) -> bytes:
    """base64url with or without padding (as go-jose accepts it); anything else is malformed."""
    text = part.rstrip("=")
    if not text.isascii():
        raise JoseError("not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise JoseError("not base64url") from None


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _int_bytes(value: int, length: int = 0) -> bytes:
    return value.to_bytes(max(length, (value.bit_length() + 7) // 8 or 1), "big")


@dataclass(frozen=True, slots=True)
class CompactJWS:
    """A decoded, not yet verified, compact JWS."""

    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes

    @property
    def alg(self) -> str:
        return str(self.header["alg"])


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        raise JoseError(f"{what} is not JSON") from None
    if not isinstance(value, dict):
        raise JoseError(f"{what} is not a JSON object")
    return value


def parse_compact(token: str, algorithms: frozenset[str]) -> CompactJWS:
    """Split and decode ``token``; its ``alg`` must be one of ``algorithms``."""
    if len(token) > MAX_TOKEN_BYTES:
        raise JoseError(f"token longer than {MAX_TOKEN_BYTES} bytes")
    parts = token.split(".")
    if len(parts) != 3:
        raise JoseError("not a compact JWS (want header.payload.signature)")
    header = _json_object(b64url_decode(parts[0]), "header")
    alg = header.get("alg")
    if not isinstance(alg, str) or not alg:
        raise JoseError("header has no alg")
    if alg.lower() == "none":
        raise JoseError("unsigned token (alg none)")
    if alg not in algorithms:
        raise JoseError(f"signing algorithm {alg!r} not allowed")
    if "crit" in header:
        raise JoseError("critical header parameters are not understood")
    claims = _json_object(b64url_decode(parts[1]), "payload")
    signature = b64url_decode(parts[2])
    if not signature:
        raise JoseError("token has no signature")
    return CompactJWS(header, claims, f"{parts[0]}.{parts[1]}".encode("ascii"), signature)


def verify_signature(jws: CompactJWS, key: PublicKey) -> None:
    """Raise :class:`JoseError` unless ``jws`` is signed by ``key`` with its ``alg``."""
    alg, data, sig = jws.alg, jws.signing_input, jws.signature
    family, bits = alg[:2], alg[2:]
    try:
        if alg == "EdDSA":
            if not isinstance(key, ed25519.Ed25519PublicKey):
                raise JoseError("EdDSA needs an Ed25519 key")
            key.verify(sig, data)
        elif family in ("RS", "PS") and bits in _HASHES:
            if not isinstance(key, rsa.RSAPublicKey):
                raise JoseError(f"{alg} needs an RSA key")
            digest = _HASHES[bits]()
            pad: padding.AsymmetricPadding = (
                padding.PKCS1v15()
                if family == "RS"
                else padding.PSS(mgf=padding.MGF1(digest), salt_length=padding.PSS.AUTO)
            )
            key.verify(sig, data, pad, digest)
        elif alg in _CURVES:
            curve, size = _CURVES[alg]
            if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != curve:
                raise JoseError(f"{alg} needs an EC key on {_CURVE_NAMES[curve]}")
            if len(sig) != 2 * size:
                raise JoseError(f"{alg} signature must be {2 * size} bytes")
            r, s = int.from_bytes(sig[:size], "big"), int.from_bytes(sig[size:], "big")
            key.verify(encode_dss_signature(r, s), data, ec.ECDSA(_HASHES[bits]()))
        elif family == "HS":
            raise JoseError(f"{alg} is symmetric: registry tokens are verified with public keys only")
        else:
            raise JoseError(f"unsupported algorithm {alg!r}")
    except InvalidSignature:
        raise JoseError("bad signature") from None


def public_key_from_jwk(jwk: Any) -> PublicKey:
    """The public key of a JWK (RSA, EC P-256/384/521, OKP Ed25519); private parts ignored."""
    if not isinstance(jwk, dict):
        raise JoseError("jwk is not an object")
    kty = jwk.get("kty")

    def field(name: str) -> bytes:
        value = jwk.get(name)
        if not isinstance(value, str) or not value:
            raise JoseError(f"jwk has no {name}")
        return b64url_decode(value)

    try:
        if kty == "RSA":
            n, e = int.from_bytes(field("n"), "big"), int.from_bytes(field("e"), "big")
            return rsa.RSAPublicNumbers(e, n).public_key()
        if kty == "EC":
            curve = _JWK_CURVES.get(str(jwk.get("crv")))
            if curve is None:
                raise JoseError(f"unsupported jwk curve {jwk.get('crv')!r}")
            x, y = int.from_bytes(field("x"), "big"), int.from_bytes(field("y"), "big")
            return ec.EllipticCurvePublicNumbers(x, y, curve).public_key()
        if kty == "OKP" and jwk.get("crv") == "Ed25519":
            return ed25519.Ed25519PublicKey.from_public_bytes(field("x"))
    except ValueError as err:
        raise JoseError(f"unusable jwk: {err}") from None
    raise JoseError(f"unsupported jwk key type {kty!r}")


def jwk_of(key: PublicKey) -> dict[str, str]:
    """The public JWK of ``key`` (what a token server puts in a JWKS)."""
    if isinstance(key, rsa.RSAPublicKey):
        nums = key.public_numbers()
        return {"kty": "RSA", "e": b64url(_int_bytes(nums.e)), "n": b64url(_int_bytes(nums.n))}
    if isinstance(key, ec.EllipticCurvePublicKey):
        pts = key.public_numbers()
        size = (key.curve.key_size + 7) // 8
        return {
            "kty": "EC",
            "crv": _CURVE_NAMES[key.curve.name],
            "x": b64url(_int_bytes(pts.x, size)),
            "y": b64url(_int_bytes(pts.y, size)),
        }
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}


def jwk_thumbprints(key: PublicKey) -> set[str]:
    """RFC 7638 SHA-256 thumbprint: distribution v3's ID for a root certificate's key.

    distribution writes EC coordinates without leading zero bytes, RFC 7638 with them;
    for the rare key where the two differ, both are returned.
    """
    prints = {_thumbprint(jwk_of(key))}
    if isinstance(key, ec.EllipticCurvePublicKey):
        pts = key.public_numbers()
        prints.add(_thumbprint({**jwk_of(key), "x": b64url(_int_bytes(pts.x)), "y": b64url(_int_bytes(pts.y))}))
    return prints


def _thumbprint(members: dict[str, str]) -> str:
    required = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x")}[members["kty"]]
    canonical = "{" + ",".join(f'"{k}":"{members[k]}"' for k in required) + "}"
    return b64url(hashlib.sha256(canonical.encode("ascii")).digest())


def libtrust_key_id(key: PublicKey) -> str:
    """libtrust's key ID (distribution 2.x): SHA-256 of the DER public key, 240 bits, base32 in 4s."""
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    text = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode("ascii").rstrip("=")
    return ":".join(text[i : i + 4] for i in range(0, len(text), 4))


def as_public_key(key: Any) -> PublicKey | None:
    """``key`` if it is a kind a token may be signed with, else None."""
    if isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        return key
    return None
