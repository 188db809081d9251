"""The application: composition, the server's lifecycle, the command line, workers, version.

- :mod:`.components`: the one registry of caches and backends (names -> factories);
- :mod:`.composition`: config -> cache + backend -> wrappers -> statter;
- :mod:`.server`: :class:`~.server.DescriptorServer` (gRPC server, health, reflection,
  metrics endpoint) and its drain;
- :mod:`.cli`: ``descriptor-server`` / ``python -m descriptor_server`` (:func:`main`);
- :mod:`.workers`: ``--workers N``, N processes sharing the port;
- :mod:`.version`: the version, ``--version`` and ``descriptor_build_info``.

``descriptor-server = descriptor_server.app:main`` is the entry point.
"""

from __future__ import annotations

from .cli import main

__all__ = ["main"]
