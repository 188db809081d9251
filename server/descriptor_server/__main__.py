"""``python -m descriptor_server``: the same as ``descriptor-server``."""

import signal
import sys


def run() -> int:
    """The ``descriptor-server`` command.

    The server's signals (SIGTERM, SIGINT: drain; SIGHUP: reload) are held from the
    first moment, before the server's modules are even imported, and handled once its
    handlers are in place: a signal during start-up is handled as it is once running
    (:func:`descriptor_server.app.workers.hold_signals`).
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGTERM, signal.SIGINT, signal.SIGHUP))
    from .app import main

    return main()


if __name__ == "__main__":
    sys.exit(run())
