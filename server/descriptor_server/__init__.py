"""The blob descriptor service: a cached blob statter served over gRPC.

The server is arranged by concern, one package each, in layers. A module may import
from its own package and from the packages its layer lists, never from a layer above
(``tests/unit/test_layering.py`` walks the imports and also refuses any import cycle):

==================  ==========================================================  ================================
package             what it holds                                               may import
==================  ==========================================================  ================================
``config``          the YAML + environment configuration, validated             (nothing of the server)
``core``            the cached statter, revalidation, the Cache and Backend     (nothing of the server; no grpc,
                    protocols, logging helpers and the logger-name table        prometheus_client or config)
``caches``          one module per cache (inmemory, none), the ``redis``        core, config
                    package (keys, scripts, cache, connection, near cache)
``backends``        one module per backend (filesystem, registry, s3, ...)      core, config
``wrappers``        bounds, health watch, traces around a cache or backend,     core, config
                    and ``stack``, the one place that puts them on
``observability``   metrics, worker metrics, the debug HTTP endpoint, tracing   core, config, caches, wrappers
                    set-up, log set-up and the call log, the near cache's
                    counters
``rpc``             the servicer, response encoding, the interceptor, the       core, config, observability
                    per-call context, health, gRPC limits
``security``        TLS, static tokens, registry tokens, the authorizer and     core, config, rpc
                    its audit
``app``             the registry of caches and backends, composition, the       everything
                    server's lifecycle, the command line, workers, version
==================  ==========================================================  ================================

``python -m descriptor_server`` and the ``descriptor-server`` command both run
:func:`descriptor_server.app.main`.
"""
