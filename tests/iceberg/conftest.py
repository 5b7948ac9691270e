"""Fixtures of the Iceberg suite: a lake (SQL catalog on SQLite plus warehouse) under
pytest's ``tmp_path``, nothing shared between tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from iceberg_support import Lake


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return Lake(tmp_path / "lake")
