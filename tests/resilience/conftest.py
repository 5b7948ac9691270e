"""Keep Hypothesis' cache (``.hypothesis/``, git-ignored) inside this directory rather than
the repository root; the tests themselves use ``database=None``."""

from __future__ import annotations

from pathlib import Path

from hypothesis.configuration import set_hypothesis_home_dir

set_hypothesis_home_dir(Path(__file__).parent / ".hypothesis")
