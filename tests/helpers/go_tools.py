"""The pinned Go programs ``./dev`` installs into ``.tools/bin`` (docs/go-tools.md).

``./dev test`` and ``./dev bench`` build them with ``go install`` at the versions pinned
in ``./dev``; a test that needs one skips when it is missing, which fails under
``CI``/``DESCRIPTOR_TEST_STRICT`` (tests/conftest.py).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLS_BIN = ROOT / ".tools" / "bin"


def go_tool(name: str) -> str | None:
    """The path of ``name`` in ``.tools/bin``, else on PATH, else None."""
    path = TOOLS_BIN / name
    if os.access(path, os.X_OK):
        return str(path)
    return shutil.which(name)


def require_go_tool(name: str) -> str:
    """``go_tool(name)``, or skip the test (a failure in CI) when it is not installed."""
    path = go_tool(name)
    if path is None:
        pytest.skip(f"{name} is not installed (./dev test installs it into .tools/bin)")
    return path
