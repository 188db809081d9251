"""The client's version: the installed distribution's, else the source tree's pyproject.toml.

One source: the ``version`` of ``client/pyproject.toml``, which is what
``importlib.metadata`` reports once the distribution is installed (wheel or editable).
Run from a source tree that is not installed (``PYTHONPATH=client``), the same file is
read directly.
"""

from __future__ import annotations

import functools
import importlib.metadata
import tomllib
from pathlib import Path

DISTRIBUTION = "descriptor-client"
UNKNOWN = "0+unknown"


def pyproject_version(path: Path) -> str:
    """The ``[project] version`` of a pyproject.toml, or ``0+unknown`` if it has none."""
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError):
        return UNKNOWN
    value = data.get("project", {}).get("version")
    return value if isinstance(value, str) and value else UNKNOWN


def distribution_version(distribution: str, pyproject: Path) -> str:
    """The installed version of ``distribution``, falling back to ``pyproject``'s."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return pyproject_version(pyproject)


@functools.cache
def version() -> str:
    """This client's version (``descriptor-client``), for example ``0.1.0``."""
    return distribution_version(DISTRIBUTION, Path(__file__).resolve().parent.parent / "pyproject.toml")
