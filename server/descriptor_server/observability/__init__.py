"""Observability: metrics, logs and traces of the server.

- :mod:`.metrics`: every Prometheus metric of one server, in its own registry;
- :mod:`.worker_metrics`: the totals across ``--workers`` processes;
- :mod:`.debug_http`: the ``http.debug`` endpoint (``/metrics``);
- :mod:`.tracing`: OpenTelemetry set-up from the ``OTEL_*`` environment;
- :mod:`.nearcache`: the Redis cache's near cache counters, as Prometheus families;
- :mod:`.logs`: log set-up (``log.*``) and the call log. The logger names are pinned
  in one table, :mod:`descriptor_server.core.loggers` (in core, so that every layer
  can name its logger).

Layering: may import core, config, caches and wrappers (see :mod:`descriptor_server`).
"""
