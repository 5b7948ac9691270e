"""The client suite's destinations: amp connection configs of the test PostgreSQL and
DuckDB files, read back and compared with the dev server's canonical chain (``kit``).

A text column stored as BYTEA (PostgreSQL ``text_nul='bytea'``, this suite's default, so
that NUL bytes survive) is decoded back to ``str`` before the comparison.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from amp.client import Client
from amp.devserver import DevServer
from amp.devserver.chain import SimulatedChain
from kit import PG_HOST, PG_PORT, SqlDestination
from kit import connected as connected_as
from kit.chain import column_values
from kit.services import PG_DATABASE, PG_USER


def pg_config(**extra: Any) -> dict[str, Any]:
    """amp connection config of the test PostgreSQL (text columns stored losslessly)."""
    config: dict[str, Any] = {
        "host": PG_HOST,
        "port": PG_PORT,
        "database": PG_DATABASE,
        "user": PG_USER,
        "text_nul": "bytea",
    }
    config.update(extra)
    return config


@dataclass
class Destination(SqlDestination):
    """A destination database of one test and ``config``, the amp connection config
    that loads into it."""

    config: dict[str, Any] = field(default_factory=dict)


@contextmanager
def connected(server: DevServer, destination: Destination, name: str = "dest") -> Iterator[Client]:
    """A client of ``server`` with ``destination`` configured as connection ``name``."""
    with connected_as(server, name, destination.kind, destination.config) as client:
        yield client


def column_filter(table: pa.Table, column: str, predicate: Callable[[Any], bool]) -> list[Any]:
    """Values of an oracle column (normalised) that satisfy ``predicate``."""
    return [value for value in column_values(table.column(column)) if predicate(value)]


# -- destinations that keep JSON: rows as (block_num, log_index, block_hash hex) -----------

LogKey = tuple[int, int, str]


def canonical_log_keys(chain: SimulatedChain) -> list[LogKey]:
    """(block_num, log_index, block hash as hex) of every canonical log right now."""
    columns = chain.canonical_table("logs").select(["block_num", "log_index", "block_hash"])
    data = columns.to_pydict()
    return [
        (block, index, block_hash.hex())
        for block, index, block_hash in zip(
            data["block_num"], data["log_index"], data["block_hash"], strict=True
        )
    ]


def json_log_key(row: dict[str, Any]) -> LogKey:
    """The key of a log row as a loader wrote it in JSON (bytes as hex)."""
    return (row["block_num"], row["log_index"], row["block_hash"])


def assert_log_keys_equal(actual: list[LogKey], expected: list[LogKey], what: str) -> None:
    """Every expected row exactly once: no key twice, none missing, none extra."""
    twice = [key for key, count in Counter((b, i) for b, i, _ in actual).items() if count > 1]
    assert not twice, f"{what}: {len(twice)} (block_num, log_index) keys twice: {twice[:5]}"
    missing, extra = set(expected) - set(actual), set(actual) - set(expected)
    assert not missing and not extra, (
        f"{what}: {len(missing)} expected rows missing (e.g. {sorted(missing)[:3]}), "
        f"{len(extra)} unexpected rows (e.g. {sorted(extra)[:3]})"
    )
    assert len(actual) == len(expected), f"{what}: {len(actual)} rows, expected {len(expected)}"
