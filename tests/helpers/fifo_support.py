"""Holding a filesystem-backend call in flight for real: a repository link file that is a FIFO.

The backend's read of the link blocks until a writer opens the FIFO, so a Stat of that
digest in that repository stays in flight until the test releases it.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path


def make_fifo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


def open_writer(path: Path, timeout: float = 10.0) -> int | None:
    """Open the write end once a reader (the server) has the FIFO open; None if none came."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as err:
            if err.errno != errno.ENXIO:  # ENXIO: no reader yet
                raise
        if time.monotonic() > deadline:
            return None
        time.sleep(0.01)


def release(path: Path, content: str, timeout: float = 10.0) -> bool:
    """Let a reader blocked on the FIFO read ``content``; False if no reader came in time.

    Without a reader the FIFO is replaced by nothing, so a later read finds no link.
    """
    fd = open_writer(path, timeout)
    if fd is None:
        path.unlink(missing_ok=True)
        return False
    try:
        os.write(fd, content.encode())
    finally:
        os.close(fd)
    return True
