"""A registry token issuer, as a real token server (docker_auth, Harbor, GitLab) issues them.

Keys and certificates are made with ``cryptography``: a self-made root CA (the file
a registry's ``auth.token.rootcertbundle`` names), optionally an intermediate CA, and a
signing certificate issued under it. Tokens are compact JWS with the signing
certificate's chain in ``x5c`` (or, for the other key-resolution paths, a ``kid`` or an
embedded ``jwk``), RS256 with RSA keys, ES256 (ES384, ES512) with EC keys, EdDSA with
Ed25519. The JWKS file holds the signing key under its ``kid``.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

_EC = {"ES256": (ec.SECP256R1(), hashes.SHA256, 32), "ES384": (ec.SECP384R1(), hashes.SHA384, 48),
       "ES512": (ec.SECP521R1(), hashes.SHA512, 66)}  # fmt: skip
_RSA_HASH = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def new_key(algorithm: str) -> PrivateKey:
    if algorithm in _EC:
        return ec.generate_private_key(_EC[algorithm][0])
    if algorithm == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def sign(key: PrivateKey, algorithm: str, data: bytes) -> bytes:
    """A JWS signature: PKCS#1 v1.5 / PSS for RSA, R||S for ECDSA, raw Ed25519."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        _, digest, size = _EC[algorithm]
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(digest())))
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    digest = _RSA_HASH[algorithm[2:]]()
    if algorithm.startswith("PS"):
        return key.sign(data, padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size), digest)
    return key.sign(data, padding.PKCS1v15(), digest)


def certificate(
    subject: str,
    key: PrivateKey,
    issuer: tuple[x509.Certificate, PrivateKey] | None = None,
    *,
    ca: bool,
    days: float = 1.0,
    path_length: int | None = None,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    signer_cert, signer_key = issuer if issuer is not None else (None, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(signer_cert.subject if signer_cert is not None else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    digest = None if isinstance(signer_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(signer_key, digest)


def der_b64(cert: x509.Certificate) -> str:
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode("ascii")


def public_jwk(key: Any) -> dict[str, str]:
    if isinstance(key, rsa.RSAPublicKey):
        n = key.public_numbers()
        return {"kty": "RSA", "n": b64url(n.n.to_bytes((n.n.bit_length() + 7) // 8, "big")),
                "e": b64url(n.e.to_bytes((n.e.bit_length() + 7) // 8, "big"))}  # fmt: skip
    if isinstance(key, ec.EllipticCurvePublicKey):
        size = (key.curve.key_size + 7) // 8
        crv = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}[key.curve.name]
        p = key.public_numbers()
        return {"kty": "EC", "crv": crv, "x": b64url(p.x.to_bytes(size, "big")), "y": b64url(p.y.to_bytes(size, "big"))}
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}


def scope_entries(scopes: list[str]) -> list[dict[str, Any]]:
    """``repository:R:pull,push`` -> distribution's access entries."""
    access = []
    for scope in scopes:
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        access.append({"type": kind, "name": name, "actions": [a for a in actions.split(",") if a]})
    return access


class TokenIssuer:
    """A token server's keys and its minting, writing ``rootcertbundle`` and ``jwks`` files."""

    def __init__(
        self,
        workdir: Path,
        *,
        algorithm: str = "RS256",
        issuer: str = "test-token-issuer",
        service: str = "test-registry",
        intermediate: bool = False,
        name: str = "token",
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.algorithm, self.issuer, self.service = algorithm, issuer, service
        self.root_key = new_key(algorithm)
        self.root = certificate(f"{name} root CA", self.root_key, ca=True)
        parent: tuple[x509.Certificate, PrivateKey] = (self.root, self.root_key)
        self.chain: list[x509.Certificate] = []
        if intermediate:
            inter_key = new_key(algorithm)
            inter = certificate(f"{name} intermediate CA", inter_key, parent, ca=True, path_length=0)
            parent = (inter, inter_key)
            self.chain.append(inter)
        self.key = new_key(algorithm)
        self.cert = certificate(f"{name} signer", self.key, parent, ca=False)
        self.chain.insert(0, self.cert)
        self.kid = f"{name}-signer-1"
        self.root_path = workdir / f"{name}-root.pem"
        self.root_path.write_bytes(self.root.public_bytes(serialization.Encoding.PEM))
        self.jwks_path = workdir / f"{name}-jwks.json"
        self.write_jwks()

    def write_jwks(self, extra: list[dict[str, Any]] | None = None) -> None:
        keys = [{**public_jwk(self.key.public_key()), "kid": self.kid, "use": "sig"}, *(extra or [])]
        self.jwks_path.write_text(json.dumps({"keys": keys}))

    def auth_config(self, realm: str = "http://127.0.0.1:1/token", **extra: Any) -> dict[str, Any]:
        """``auth.token`` trusting this issuer through its root bundle (same keys for registry and service)."""
        return {
            "realm": realm,
            "service": self.service,
            "issuer": self.issuer,
            "rootcertbundle": str(self.root_path),
            **extra,
        }

    def claims(
        self, scopes: list[str], *, subject: str = "alice", lifetime: float = 300, **over: Any
    ) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": now + int(lifetime),
            "nbf": now - 10,
            "iat": now,
            "jti": b64url(os.urandom(12)),
            "access": scope_entries(scopes),
        }
        claims.update(over)
        return claims

    def mint(
        self,
        scopes: list[str],
        *,
        via: str = "x5c",
        header: dict[str, Any] | None = None,
        key: PrivateKey | None = None,
        algorithm: str | None = None,
        **claims: Any,
    ) -> str:
        """A signed token granting ``scopes``; ``via`` is how it names its key: x5c, kid, jwk or none."""
        alg = algorithm or self.algorithm
        head: dict[str, Any] = {"typ": "JWT", "alg": alg}
        if via == "x5c":
            head["x5c"] = [der_b64(c) for c in self.chain]
        elif via == "kid":
            head["kid"] = self.kid
        elif via == "jwk":
            head["jwk"] = {**public_jwk(self.key.public_key()), "kid": self.kid}
        head.update(header or {})
        body = self.claims(scopes, **claims)
        return self.sign_raw(head, body, key or self.key, alg)

    @staticmethod
    def sign_raw(header: dict[str, Any], claims: Any, key: PrivateKey, algorithm: str) -> str:
        compact = {"separators": (",", ":")}
        signing_input = (
            f"{b64url(json.dumps(header, **compact).encode())}.{b64url(json.dumps(claims, **compact).encode())}"
        )
        return f"{signing_input}.{b64url(sign(key, algorithm, signing_input.encode('ascii')))}"
