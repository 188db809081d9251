"""Transport security: TLS and mutual TLS for the gRPC listener (``grpc.tls``).

:func:`server_credentials` builds gRPC server credentials from ``grpc.tls``:
``certificate`` + ``key`` turn on TLS; ``clientcas`` (one or more PEM files) turns on
mutual TLS, where a client certificate signed by one of those CAs is required.
"""

from __future__ import annotations

import grpc

from ..config import ConfigError, GrpcTLSConfig


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
    try:
        return grpc.ssl_server_credentials(
            [(key, chain)],
            root_certificates=roots or None,
            require_client_auth=bool(roots),
        )
    except Exception as err:  # grpcio raises plain errors for unusable key material
        raise ConfigError("grpc.tls", f"unusable certificate or key: {err}") from None


__all__ = ["server_credentials"]
