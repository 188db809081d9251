"""grpcio server options from the ``grpc`` section: message and metadata sizes, keepalive."""

from __future__ import annotations

from typing import Any

from ..config import GrpcConfig


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def server_options(g: GrpcConfig) -> list[tuple[str, Any]]:
    """Every grpcio option of the main server."""
    opts: list[tuple[str, Any]] = [
        ("grpc.so_reuseport", 1 if g.workers > 1 else 0),
        ("grpc.max_receive_message_length", g.maxrecvmsgsize),
        *limit_options(g),
    ]
    # Bounds on what a client can hold open without sending anything: connections on
    # the port, and calls per connection (each open call costs memory until it ends).
    if g.maxconnections > 0:
        opts.append(("grpc.max_allowed_incoming_connections", g.maxconnections))
    if g.maxstreams > 0:
        opts.append(("grpc.max_concurrent_streams", g.maxstreams))
    return opts


def limit_options(g: GrpcConfig) -> list[tuple[str, Any]]:
    """grpcio server options for the metadata-size limit and the keepalive policy."""
    ka = g.keepalive
    opts: list[tuple[str, Any]] = [
        # Soft and hard limit equal: a call over it is refused every time with
        # RESOURCE_EXHAUSTED, never "sometimes".
        ("grpc.max_metadata_size", g.maxmetadatasize),
        ("grpc.absolute_max_metadata_size", g.maxmetadatasize),
        ("grpc.keepalive_time_ms", _ms(ka.time)),
        ("grpc.keepalive_timeout_ms", _ms(ka.timeout)),
        # Enforcement: a client pinging more often than this (or at all on an idle
        # connection, unless permitwithoutcalls) is sent GOAWAY ENHANCE_YOUR_CALM.
        ("grpc.http2.min_recv_ping_interval_without_data_ms", _ms(ka.minpinginterval)),
        ("grpc.keepalive_permit_without_calls", 1 if ka.permitwithoutcalls else 0),
        ("grpc.http2.max_ping_strikes", ka.maxpingstrikes),
    ]
    if ka.maxconnectionidle > 0:
        opts.append(("grpc.max_connection_idle_ms", _ms(ka.maxconnectionidle)))
    if ka.maxconnectionage > 0:
        opts.append(("grpc.max_connection_age_ms", _ms(ka.maxconnectionage)))
        opts.append(("grpc.max_connection_age_grace_ms", _ms(ka.maxconnectionagegrace)))
    return opts
