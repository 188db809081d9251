"""The blob descriptor service: a cached blob statter served over gRPC.

Layout: ``config`` (YAML + environment), ``statter`` (the cached statter and its
metrics), ``caches/`` and ``backends/`` (one module each, all implementing the
``BlobDescriptorService`` protocol), ``service`` (the gRPC servicer), ``app``
(wiring and lifecycle).
"""
