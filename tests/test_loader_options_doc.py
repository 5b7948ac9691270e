"""The option tables of docs/loaders.md ("Options of amp's loaders") checked against the
code, so that the reference cannot drift: each loader's documented keys are exactly its
class's ``config_keys``, the connection-wide keys exactly ``COMMON_KEYS`` and the
fields of their config dataclasses, and every default the page gives as a Python value
is the value the code uses.

Why "every default the code exposes": the loaders of amp take a plain dict, so their
defaults live in their constructors. They are read back from a loader built with a
minimal config (its attributes, ``describe()``, the libpq or librdkafka settings it
would connect with); no connection is opened. A default the page gives in words (libpq's
or DuckDB's own, "the table's name") is not a Python value and is not compared; the
test does insist that every literal default on the page is one it compares.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import typing
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from amp.connection import COMMON_KEYS
from amp.errors import ConfigError
from amp.loaders import DataLoader, loader_class
from amp.loaders.registry import BUILT_IN
from amp.loop.grouping import CommitGrouping
from amp.streaming.checkpoint import CheckpointConfig
from amp.streaming.idempotency import IdempotencyConfig
from amp.streaming.resilience import (
    BackPressureConfig,
    CircuitBreakerConfig,
    ResilienceConfig,
    RetryConfig,
)

DOC = Path(__file__).resolve().parents[1] / "docs" / "loaders.md"
MARKER = re.compile(r"^<!-- options: (?P<name>[a-z_.]+) -->$", re.MULTILINE)
# The name a loader is built with here; a default that depends on it is written on the
# page with this placeholder ('amp-<connection name>').
CONNECTION = "conn"
PLACEHOLDER = "<connection name>"
# The least config each loader can be built from (no connection is opened).
MINIMAL: dict[str, dict[str, Any]] = {
    "postgresql": {},
    "duckdb": {},
    "redis": {},
    "kafka": {"bootstrap_servers": "localhost:9092"},
    "deltalake": {"table_path": "/tmp/amp-options-doc"},
    "iceberg": {
        "catalog_config": {"type": "sql", "uri": "sqlite:///c.db", "warehouse": "file:///w"}
    },
}
SECTIONS: dict[str, type] = {
    "resilience.retry": RetryConfig,
    "resilience.circuit_breaker": CircuitBreakerConfig,
    "resilience.back_pressure": BackPressureConfig,
    "checkpoint": CheckpointConfig,
    "idempotency": IdempotencyConfig,
    "commit_grouping": CommitGrouping,
}


class Option(NamedTuple):
    type: str  # the type column, backticks removed
    default: str  # the default column as written
    meaning: str


def option_tables() -> dict[str, dict[str, Option]]:
    """Each ``<!-- options: name -->`` table of the page: key → its row."""
    text = DOC.read_text(encoding="utf-8")
    tables: dict[str, dict[str, Option]] = {}
    for marker in MARKER.finditer(text):
        lines = text[marker.end() :].lstrip("\n").splitlines()
        rows = []
        for line in lines:
            if not line.startswith("|"):
                break
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        name = marker.group("name")
        assert len(rows) > 2, f"{DOC}: no table right after the marker of {name!r}"
        assert rows[0] == ["key", "type", "default", "meaning"], f"{name}: header {rows[0]}"
        options: dict[str, Option] = {}
        for cells in rows[2:]:
            assert len(cells) == 4, f"{name}: a row has {len(cells)} cells: {cells}"
            key = re.fullmatch(r"`([^`]+)`", cells[0])
            assert key is not None, f"{name}: key cell {cells[0]!r} is not one `key`"
            assert key.group(1) not in options, f"{name}: {key.group(1)!r} is listed twice"
            assert cells[3], f"{name}: {key.group(1)!r} has no meaning"
            options[key.group(1)] = Option(cells[1].strip("`"), cells[2], cells[3])
        assert name not in tables, f"{DOC}: two tables are marked {name!r}"
        tables[name] = options
    return tables


TABLES = option_tables()


def literal_default(cell: str) -> tuple[bool, Any]:
    """(True, value) when the default cell starts with a Python value in backticks
    (``'public'``, ``30``, ``{}``), the connection placeholder filled in."""
    found = re.match(r"`([^`]+)`", cell)
    if found is None:
        return False, None
    try:
        value = ast.literal_eval(found.group(1).replace(PLACEHOLDER, CONNECTION))
    except (ValueError, SyntaxError):
        return False, None
    return True, value


def same(documented: Any, actual: Any) -> bool:
    """Equal, and not a bool standing in for a number (``True == 1``)."""
    return documented == actual and isinstance(documented, bool) == isinstance(actual, bool)


# -- what each loader uses when a key is absent ---------------------------------------------


def _postgresql(loader: Any) -> dict[str, Any]:
    params = loader._connection_params()  # the libpq parameters it would connect with
    return {
        "host": params["host"],
        "application_name": params["application_name"],
        "schema": loader.schema_name,
        "connect_timeout": loader.connect_timeout,
        "text_nul": loader.text_nul,
        "dead_peer_timeout": loader.dead_peer_timeout,
    }


def _duckdb(loader: Any) -> dict[str, Any]:
    return {"database": loader.database}


def _redis(loader: Any) -> dict[str, Any]:
    where = urllib.parse.urlsplit(loader.describe())  # redis://host:port/db, defaults filled
    return {
        "host": where.hostname,
        "port": where.port,
        "db": int(where.path.lstrip("/")),
        "data_structure": loader.structure,
        "socket_timeout": loader.socket_timeout,
        "dead_peer_timeout": loader.dead_peer_timeout,
        "lease_seconds": loader.lease_seconds,
    }


def _kafka(loader: Any) -> dict[str, Any]:
    producer = loader._client_config(producer=True)  # the librdkafka settings it would use
    return {
        "state_topic": loader.state_topic,
        "value_format": loader.value_format,
        "compression": loader.compression,
        "acks": producer["acks"],
        "client_id": producer["client.id"],
        "partitions": loader.partitions,
        "replication_factor": loader.replication_factor,
        "timeout": loader.timeout,
        "retraction_window_blocks": loader.window,
        "producer_config": loader.producer_config,
        "dead_peer_timeout": loader.dead_peer_timeout,
    }


def _deltalake(loader: Any) -> dict[str, Any]:
    return {
        "storage_options": loader.storage_options,
        "partition_by": loader.partition_by,
        "compression": loader.compression,
        "configuration": loader.configuration,
        "compact_every": loader.compact_every,
    }


def _iceberg(loader: Any) -> dict[str, Any]:
    settings = loader.settings
    return {
        "catalog_name": settings.catalog_name,
        "namespace": ".".join(settings.namespace),
        "partition_spec": list(settings.partition_spec),
        "table_properties": settings.table_properties,
        "timestamp_ns": settings.timestamp_ns,
        "commit_retries": settings.commit_retries,
        "max_snapshots": settings.max_snapshots,
    }


EFFECTIVE: dict[str, Callable[[Any], dict[str, Any]]] = {
    "postgresql": _postgresql,
    "duckdb": _duckdb,
    "redis": _redis,
    "kafka": _kafka,
    "deltalake": _deltalake,
    "iceberg": _iceberg,
}


def built(name: str, config: dict[str, Any]) -> DataLoader[Any]:
    return loader_class(name).for_connection(dict(config), CONNECTION)


# -- the tests --------------------------------------------------------------------------------


def test_every_built_in_loader_has_a_table() -> None:
    assert set(BUILT_IN) == set(MINIMAL), "a loader was added: give it a table and a MINIMAL"
    assert set(BUILT_IN) <= set(TABLES), f"no options table for {set(BUILT_IN) - set(TABLES)}"


@pytest.mark.parametrize("name", sorted(MINIMAL))
def test_documented_keys_are_the_loaders_config_keys(name: str) -> None:
    documented = set(TABLES[name])
    keys = set(loader_class(name).config_keys)
    assert documented == keys, (
        f"docs/loaders.md lists {sorted(documented - keys)} that {name} does not take, and "
        f"misses {sorted(keys - documented)}"
    )


@pytest.mark.parametrize("name", sorted(MINIMAL))
def test_documented_defaults_are_the_loaders(name: str) -> None:
    actual = EFFECTIVE[name](built(name, MINIMAL[name]))
    literals = {}
    references = {}  # a default written as another key's: "the `dead_peer_timeout`"
    for key, option in TABLES[name].items():
        is_literal, value = literal_default(option.default)
        if is_literal:
            literals[key] = value
        referred = re.fullmatch(r"the `(\w+)`", option.default)
        if referred is not None:
            references[key] = referred.group(1)
    for key, other in references.items():
        assert other in literals, f"{name}[{key!r}]: defaults to {other!r}, which has no value"
        literals[key] = literals[other]
    assert set(literals) == set(actual), (
        f"{name}: defaults written as values {sorted(literals)}, compared here "
        f"{sorted(actual)}: every value on the page must be checked, every checked one on it"
    )
    for key, value in actual.items():
        assert same(literals[key], value), (
            f"{name}[{key!r}]: page says {literals[key]!r}, code {value!r}"
        )


@pytest.mark.parametrize("name", sorted(MINIMAL))
def test_required_keys_are_required(name: str) -> None:
    required = [key for key, option in TABLES[name].items() if option.default == "required"]
    for key in required:
        config = {k: v for k, v in MINIMAL[name].items() if k != key}
        with pytest.raises(ConfigError, match=key):
            built(name, config)
    # and the minimal config, which holds exactly the required keys, is enough
    assert set(MINIMAL[name]) == set(required)
    built(name, MINIMAL[name])


def test_connection_keys() -> None:
    assert set(TABLES["connection"]) == set(COMMON_KEYS)
    sections = {field.name for field in dataclasses.fields(ResilienceConfig)}
    assert set(TABLES["resilience"]) == sections
    assert {f"resilience.{section}" for section in sections} | {
        "checkpoint",
        "idempotency",
        "commit_grouping",
    } == set(SECTIONS)


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_connection_sections_match_their_dataclasses(section: str) -> None:
    config_type = SECTIONS[section]
    fields = {field.name: field for field in dataclasses.fields(config_type) if field.init}
    documented = TABLES[section]
    assert set(documented) == set(fields), (
        f"{section}: page {sorted(documented)}, code {sorted(fields)}"
    )
    hints = typing.get_type_hints(config_type)
    for key, option in documented.items():
        assert option.type == hints[key].__name__, f"{section}[{key!r}] type: {option.type}"
        is_literal, value = literal_default(option.default)
        assert is_literal, f"{section}[{key!r}]: default {option.default!r} is not a value"
        assert same(value, fields[key].default), (
            f"{section}[{key!r}]: page says {value!r}, code {fields[key].default!r}"
        )
