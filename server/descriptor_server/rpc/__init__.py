"""The gRPC adapter: the statter as ``descriptor.v1.BlobDescriptorService``.

- :mod:`.servicer`: the servicer (request checks, the statter's answers, errors);
- :mod:`.encoding`: responses encoded without building messages;
- :mod:`.interceptor`: every call counted at its start, spans, the call's metadata;
- :mod:`.context`: the per-call state (metadata, principal, audited call), one module;
- :mod:`.health`: ``grpc.health.v1`` and the health-only listener;
- :mod:`.limits`: the gRPC channel options from ``grpc``.

Layering: may import core, config and observability (see :mod:`descriptor_server`).
"""
