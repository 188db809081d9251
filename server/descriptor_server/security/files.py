"""Files re-read without a restart: what tells that a file changed, and how often to look.

The TLS files (:class:`.tls.ReloadingTLS`) and the static tokens file
(:class:`.static.TokenAuthorizer`) are checked at most every :data:`RELOAD_INTERVAL`
seconds, one ``stat`` per file, and re-read at once on SIGHUP.
"""

from __future__ import annotations

import os

#: How often, at most, the TLS files and the static tokens file are checked for a change
#: (the default of ``auth.token.reloadinterval`` too). SIGHUP re-reads them at once.
RELOAD_INTERVAL = 10.0


def file_signature(path: str) -> tuple[int, int, int] | None:
    """What changes when a file is replaced or rewritten (inode, size, mtime), or None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


__all__ = ["RELOAD_INTERVAL", "file_signature"]
