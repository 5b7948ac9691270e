"""Fixtures of the loop suite: the real PostgreSQL and a fresh table name per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from loop_support import Admin

from kit import PG_DSN, require_postgres


@pytest.fixture
def admin() -> Iterator[Admin]:
    require_postgres()
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        yield conn


@pytest.fixture
def table(admin: Admin) -> Iterator[str]:
    name = f"loop_{uuid.uuid4().hex[:10]}"
    yield name
    admin.execute(f'DROP TABLE IF EXISTS "{name}"')
    for state in ("amp_checkpoints", "amp_processed_ranges"):
        admin.execute(f"DELETE FROM {state} WHERE table_name = %s", (name,))
