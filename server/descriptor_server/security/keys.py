"""The keys registry tokens are trusted by: ``rootcertbundle``, ``jwks``, and x5c chains.

:class:`TrustStore` holds what distribution's token access controller holds: a pool of
root certificates (``rootcertbundle``), the trusted keys by key ID (every root
certificate's public key under its RFC 7638 thumbprint, as distribution v3 names it,
and under its libtrust key ID, as distribution 2.x does; every key of the ``jwks``
file under its ``kid``). Both files are re-read when they change (checked at most every
``reloadinterval`` seconds, on the call path: one ``stat`` per file) and on
:meth:`TrustStore.reload` (SIGHUP). A file that no longer loads is logged and the keys
loaded before stay in force.

:func:`verify_chain` checks an ``x5c`` chain the way Go's ``x509.Certificate.Verify``
does with ``ExtKeyUsageAny``: each certificate valid now, each parent a CA (basic
constraints; key usage, when present, allows certificate signing; path length), each
signature verified, ending at a root of the bundle (a leaf that is itself in the
bundle is trusted as it is). Name constraints are not evaluated (a token signer's names
mean nothing here).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import logging
import os
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm

from ..config import ConfigError
from ..core import loggers
from .jose import JoseError, PublicKey, as_public_key, jwk_thumbprints, libtrust_key_id, public_key_from_jwk

log = logging.getLogger(loggers.AUTH)

#: Most certificates an x5c chain may carry, and most signature checks to build a path.
MAX_CHAIN = 10
MAX_SIGNATURE_CHECKS = 100

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n(.*?)-----END CERTIFICATE-----", re.DOTALL)


@dataclass(frozen=True)
class KeySet:
    """One loaded generation of trusted material."""

    roots: tuple[x509.Certificate, ...] = ()
    trusted: dict[str, PublicKey] = field(default_factory=dict)
    generation: int = 0

    def __post_init__(self) -> None:
        by_subject: dict[bytes, list[x509.Certificate]] = {}
        for cert in self.roots:
            by_subject.setdefault(cert.subject.public_bytes(), []).append(cert)
        object.__setattr__(self, "_by_subject", by_subject)
        object.__setattr__(self, "_root_ders", frozenset(_der(c) for c in self.roots))

    def roots_named(self, name: x509.Name) -> list[x509.Certificate]:
        by_subject: dict[bytes, list[x509.Certificate]] = getattr(self, "_by_subject")  # noqa: B009
        return by_subject.get(name.public_bytes(), [])

    def is_root(self, cert: x509.Certificate) -> bool:
        ders: frozenset[bytes] = getattr(self, "_root_ders")  # noqa: B009
        return _der(cert) in ders


def _der(cert: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return cert.public_bytes(Encoding.DER)


# -- loading ----------------------------------------------------------------------------


def load_root_bundle(path: str, key: str = "auth.token.rootcertbundle") -> list[x509.Certificate]:
    """Every CERTIFICATE block of a PEM file (other blocks are skipped, as distribution does)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise ConfigError(key, f"cannot read {path}: {err.strerror or err}") from None
    certs = []
    for i, m in enumerate(_PEM_CERT.finditer(data)):
        try:
            der = base64.b64decode(b"".join(m.group(1).split()), validate=True)
            certs.append(x509.load_der_x509_certificate(der))
        except (ValueError, binascii.Error) as err:
            raise ConfigError(key, f"{path}: certificate {i} does not parse: {err}") from None
    return certs


def load_jwks(path: str, key: str = "auth.token.jwks") -> dict[str, PublicKey]:
    """The public keys of a JWKS file (``{"keys": [...]}``) by ``kid``.

    A key without ``kid`` cannot be named by a token and is skipped; a symmetric
    (``oct``) key cannot verify a registry token and is skipped; any other unusable key
    refuses the file.
    """
    try:
        with open(path, "rb") as f:
            data: Any = json.loads(f.read())
    except OSError as err:
        raise ConfigError(key, f"cannot read {path}: {err.strerror or err}") from None
    except ValueError as err:
        raise ConfigError(key, f"{path} is not JSON: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ConfigError(key, f'{path} must hold a JWK set: {{"keys": [...]}}')
    keys: dict[str, PublicKey] = {}
    for i, jwk in enumerate(data["keys"]):
        if isinstance(jwk, dict) and jwk.get("kty") == "oct":
            log.warning("%s: key %d is symmetric (oct) and cannot verify registry tokens: skipped", key, i)
            continue
        try:
            public = public_key_from_jwk(jwk)
        except JoseError as err:
            raise ConfigError(f"{key}.keys[{i}]", f"{path}: {err}") from None
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not kid:
            log.warning("%s: key %d has no kid: skipped (tokens name their key by kid)", key, i)
            continue
        keys[kid] = public
    return keys


def build_keyset(rootcertbundle: str, jwks: str, generation: int = 0) -> KeySet:
    """Load both files; refuse (as distribution does) when there is no signing key at all."""
    roots = load_root_bundle(rootcertbundle) if rootcertbundle else []
    jwks_keys = load_jwks(jwks) if jwks else {}
    if not roots and not jwks_keys:
        raise ConfigError("auth.token", "token auth needs at least one signing key (rootcertbundle or jwks)")
    trusted: dict[str, PublicKey] = {}
    for cert in roots:
        try:
            public = as_public_key(cert.public_key())
        except (ValueError, UnsupportedAlgorithm):
            public = None
        if public is None:
            continue
        for kid in (*jwk_thumbprints(public), libtrust_key_id(public)):
            trusted[kid] = public
    trusted.update(jwks_keys)
    return KeySet(tuple(roots), trusted, generation)


def _signature(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class TrustStore:
    """The trusted keys, re-read when their files change and on :meth:`reload`."""

    def __init__(self, rootcertbundle: str, jwks: str, *, reloadinterval: float = 10.0) -> None:
        self.rootcertbundle = rootcertbundle
        self.jwks = jwks
        self.interval = reloadinterval
        self._files = [p for p in (rootcertbundle, jwks) if p]
        self._stamps = [_signature(p) for p in self._files]
        self.keys = build_keyset(rootcertbundle, jwks)
        self._next_check = time.monotonic() + reloadinterval
        self._lock = threading.Lock()

    def current(self) -> KeySet:
        """The keys in force, after re-reading the files if they changed (checked at most every interval)."""
        if self.interval > 0 and time.monotonic() >= self._next_check:
            self._next_check = time.monotonic() + self.interval
            if [_signature(p) for p in self._files] != self._stamps:
                self.reload("files changed")
        return self.keys

    def reload(self, why: str = "SIGHUP") -> bool:
        """Re-read both files now; True when the new keys are in force."""
        with self._lock:
            stamps = [_signature(p) for p in self._files]
            try:
                keys = build_keyset(self.rootcertbundle, self.jwks, self.keys.generation + 1)
            except ConfigError as err:
                self._stamps = stamps  # do not retry a broken file until it changes again
                log.error("token keys not reloaded (%s), keeping the previous ones: %s", why, err)
                return False
            self._stamps = stamps
            self.keys = keys
        log.info(
            "token keys reloaded (%s): %d root certificates, %d trusted key IDs",
            why,
            len(keys.roots),
            len(keys.trusted),
        )
        return True


# -- x5c chains -------------------------------------------------------------------------------


def _parse_x5c(x5c: Any) -> list[x509.Certificate]:
    if not isinstance(x5c, list) or not x5c:
        raise JoseError("x5c is not a non-empty list of certificates")
    if len(x5c) > MAX_CHAIN:
        raise JoseError(f"x5c holds more than {MAX_CHAIN} certificates")
    certs = []
    for i, item in enumerate(x5c):
        if not isinstance(item, str) or not item:
            raise JoseError(f"x5c[{i}] is not a base64 certificate")
        try:
            certs.append(x509.load_der_x509_certificate(base64.b64decode(item, validate=True)))
        except (ValueError, binascii.Error):
            raise JoseError(f"x5c[{i}] does not parse as a certificate") from None
    return certs


def _check_cert(cert: x509.Certificate, now: datetime.datetime, what: str) -> None:
    if now < cert.not_valid_before_utc:
        raise JoseError(f"{what} certificate is not valid yet")
    if now > cert.not_valid_after_utc:
        raise JoseError(f"{what} certificate has expired")
    try:
        extensions = cert.extensions
    except ValueError:
        raise JoseError(f"{what} certificate has malformed extensions") from None
    for ext in extensions:
        if ext.critical and isinstance(ext.value, x509.UnrecognizedExtension):
            raise JoseError(f"{what} certificate has an unhandled critical extension")


def _may_issue(parent: x509.Certificate, below: int) -> bool:
    """Whether ``parent`` may sign a certificate with ``below`` intermediates under it."""
    try:
        bc = parent.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return parent.version == x509.Version.v1  # Go: a v3 parent needs basic constraints
    except ValueError:
        return False
    if not bc.ca or (bc.path_length is not None and below > bc.path_length):
        return False
    try:
        ku = parent.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True
    except ValueError:
        return False
    return bool(ku.key_cert_sign)


def verify_chain(x5c: Any, keys: KeySet, now: datetime.datetime | None = None) -> PublicKey:
    """The leaf's public key, if ``x5c`` chains to a root of ``keys``; else :class:`JoseError`."""
    now = now or datetime.datetime.now(datetime.UTC)
    certs = _parse_x5c(x5c)
    leaf, intermediates = certs[0], certs[1:]
    _check_cert(leaf, now, "leaf")
    public = as_public_key(leaf.public_key())
    if public is None:
        raise JoseError("leaf certificate key cannot sign tokens")
    if keys.is_root(leaf):
        return public
    budget = [MAX_SIGNATURE_CHECKS]

    def chains_up(cert: x509.Certificate, below: int, used: Sequence[x509.Certificate]) -> bool:
        parents = [(p, True) for p in keys.roots_named(cert.issuer)]
        parents += [(p, False) for p in intermediates if p.subject == cert.issuer and p not in used]
        for parent, is_root in parents:
            if budget[0] <= 0:
                raise JoseError("x5c chain needs too many signature checks")
            budget[0] -= 1
            if not _may_issue(parent, below):
                continue
            try:
                cert.verify_directly_issued_by(parent)
                _check_cert(parent, now, "root" if is_root else "intermediate")
            except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm, JoseError):
                continue
            if is_root or chains_up(parent, below + 1, [*used, parent]):
                return True
        return False

    if not chains_up(leaf, 0, [leaf]):
        raise JoseError("x5c chain does not lead to a trusted root certificate")
    return public
