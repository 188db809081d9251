"""Transport security: TLS and mutual TLS for the gRPC listener (``grpc.tls``).

:func:`server_credentials` builds gRPC server credentials from ``grpc.tls``:
``certificate`` + ``key`` turn on TLS; ``clientcas`` (one or more PEM files) turns on
mutual TLS, where a client certificate signed by one of those CAs is required.
:class:`ReloadingTLS` serves the same through gRPC's dynamic server credentials, re-read
when the files change (checked at a TLS handshake, at most every
:data:`.files.RELOAD_INTERVAL` seconds) and on SIGHUP; a set of files that no longer
loads (a key that is not the certificate's: a rotation caught half-way) is logged and
the previous one stays in force. Connections already open keep their handshake's
certificate.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import grpc

from ..config import ConfigError, GrpcTLSConfig
from ..core import loggers
from .files import RELOAD_INTERVAL, file_signature

log = logging.getLogger(loggers.SERVER)


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
        log.info("TLS certificate, key and client CAs reloaded (%s): %s", why, self.tls.certificate)
        return True


__all__ = ["ReloadingTLS", "check_key_pair", "server_credentials"]
