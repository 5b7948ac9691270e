"""amp's version, for ``amp --version`` and ``amp.__version__``.

Why a fallback: run from a source tree that was never installed (``PYTHONPATH=src``),
there is no package metadata; the version written in pyproject.toml is then the truth.
"""

from __future__ import annotations

import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

DISTRIBUTION = "amp-python"
# src/amp/version.py -> the checkout's pyproject.toml
_PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def package_version() -> str:
    """The installed package's version, else pyproject's, else ``0.0.0``."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return pyproject_version(_PYPROJECT)


def pyproject_version(path: Path) -> str:
    """``[project] version`` of the pyproject.toml at ``path``; ``0.0.0`` without one."""
    try:
        with path.open("rb") as file:
            project = tomllib.load(file).get("project", {})
    except (OSError, tomllib.TOMLDecodeError):
        return "0.0.0"
    found = project.get("version") if isinstance(project, dict) else None
    return found if isinstance(found, str) else "0.0.0"
