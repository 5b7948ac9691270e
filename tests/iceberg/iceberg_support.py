"""Read an Iceberg destination back with pyiceberg and compare it with the dev server's
canonical chain.

Every test gets its own lake under pytest's ``tmp_path``: a SQL catalog on SQLite
(``<dir>/catalog.db``) and its warehouse (``<dir>/warehouse``), exactly what the URL
``iceberg://<dir>`` names, so the in-process loads, ``amp load`` children and ``amp
checkpoints``/``amp verify`` all see the same tables.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.table import Table

from amp.devserver.chain import SimulatedChain
from amp.loaders.iceberg.state import PROPERTY_PREFIX
from kit.chain import arrow_rows, assert_equals_canonical

# The logs' key (block, position in the block), their fork-telling hash, a binary with
# NUL bytes, the fixed-size hashes and the nanosecond timestamp (stored in microseconds).
LOG_COLUMNS = ("block_num", "log_index", "block_hash", "data", "tx_hash", "address", "timestamp")
CATALOG_NAME = "amp"


@dataclass(frozen=True)
class Lake:
    """One test's catalog and warehouse."""

    directory: Path

    @property
    def url(self) -> str:
        return f"iceberg://{self.directory}"

    @property
    def catalog_config(self) -> dict[str, str]:
        return {
            "type": "sql",
            "uri": f"sqlite:///{self.directory}/catalog.db",
            "warehouse": f"file://{self.directory}/warehouse",
        }

    def config(self, **more: Any) -> dict[str, Any]:
        """The amp connection config of this lake."""
        return {"catalog_config": self.catalog_config, **more}

    def catalog(self) -> Catalog:
        return load_catalog(CATALOG_NAME, **self.catalog_config)

    def table(self, name: str, namespace: str = "amp") -> Table:
        return self.catalog().load_table((namespace, name))


def read_all(table: Table) -> pa.Table:
    return table.scan().to_arrow()


def assert_exact(
    table: Table,
    chain: SimulatedChain,
    columns: tuple[str, ...] = LOG_COLUMNS,
    blocks: tuple[int, int] | None = None,
) -> int:
    """The table holds exactly the canonical logs (of ``blocks``): none missing, none
    extra, none twice, every compared column equal. Returns the number of rows."""
    rows = arrow_rows(read_all(table), columns)
    return assert_equals_canonical(
        rows, chain, "logs", columns, 2, f"iceberg {table.name()}", blocks=blocks
    )


def visible_snapshots(table: Table) -> list[int | None]:
    """The current snapshot of every metadata version the catalog ever pointed at, in
    order: what readers could see after each catalog commit."""
    from pyiceberg.serializers import FromInputFile

    seen = []
    for entry in table.metadata.metadata_log:
        version = FromInputFile.table_metadata(table.io.new_input(entry.metadata_file))
        seen.append(version.current_snapshot_id)
    seen.append(table.metadata.current_snapshot_id)
    return seen


def checkpoints(table: Table) -> dict[int, dict[str, Any]]:
    """The amp checkpoints among the table's properties, by worker."""
    found = {}
    for name, value in table.properties.items():
        if name.startswith(PROPERTY_PREFIX):
            key = json.loads(name[len(PROPERTY_PREFIX) :])
            found[int(key[4])] = json.loads(value)
    return found


def checkpoint_end(table: Table, worker: int = 0) -> int:
    found = checkpoints(table)
    assert worker in found, f"no checkpoint of worker {worker}: {sorted(found)}"
    return int(found[worker]["ranges"][-1]["end"])
