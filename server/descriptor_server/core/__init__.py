"""The core: the cached statter and what it needs, free of transport, metrics and config.

- :mod:`.statter`: :class:`~.statter.CachedBlobStatter`, the cache in front of a backend;
- :mod:`.revalidate`: background revalidation of hot keys;
- :mod:`.cache`, :mod:`.backend`: the :class:`Cache` and :class:`Backend` protocols;
- :mod:`.logutil`: rate-limited and recovery log lines, error descriptions;
- :mod:`.loggers`: the one table of the server's logger names.

Layering: nothing here imports another package of the server, nor grpc,
prometheus_client or the config (see :mod:`descriptor_server`).
"""
