"""Helpers of the delivery suite: a destination's table and delivery state read back.

A destination is correct when it holds exactly the dev server's canonical rows: no row
missing, none twice, none of a forked block (``kit.assert_table_equals_chain``). Loads
are driven from their own results (``kit.drive``), never by sleeping.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from amp.devserver import DevServer
from amp.devserver.chain import SimulatedChain
from amp.streaming.types import hex_hash
from kit import Action, Driven, OnResult, Row, SqlDestination, normalise
from kit import assert_table_equals_chain as assert_table
from kit import load_to_head as drive_to_head

# The compared columns; the first two are the key of a log row.
COLUMNS = ("block_num", "log_index", "block_hash", "tx_hash", "data", "_block_num")


@dataclass
class Destination(SqlDestination):
    """One test's destination: its table ``table`` and connection ``name`` (both unique
    to the test; the table is dropped at teardown with the test's other tables)."""

    table: str = ""
    name: str = ""

    def __post_init__(self) -> None:
        self.created.append(self.table)

    def config(self, **features: Any) -> dict[str, Any]:
        """The connection config with amp's delivery features (``checkpoint=...``)."""
        # Checkpoints are checked microbatch by microbatch: one commit each.
        return {**self.loader_config(), "commit_grouping": {"enabled": False}, **features}

    def primary_key(self, table: str) -> list[str]:
        rows = self.query(
            "SELECT k.column_name FROM information_schema.table_constraints c "
            "JOIN information_schema.key_column_usage k ON k.constraint_name = c.constraint_name "
            "AND k.table_name = c.table_name "
            "AND k.table_schema = c.table_schema "
            "WHERE c.table_schema = current_schema() AND c.table_name = %s "
            "AND c.constraint_type = 'PRIMARY KEY' "
            "ORDER BY k.ordinal_position",
            (table,),
        )
        return [row[0] for row in rows]

    def rows(self, columns: Sequence[str] = COLUMNS) -> list[Row]:
        return [tuple(normalise(v) for v in row) for row in self.select(self.table, columns)]

    # -- delivery state ----------------------------------------------------------------

    def checkpoint(self, prefix: str = "amp_") -> dict[str, Any] | None:
        """This table's checkpoint row (worker 0) with ``checkpoint_data`` parsed."""
        if not self.exists(f"{prefix}checkpoints"):
            return None
        rows = self.query(
            f"SELECT connection_name, table_name, worker_id, checkpoint_data, timestamp "
            f"FROM {prefix}checkpoints WHERE connection_name = %s AND table_name = %s",
            (self.name, self.table),
        )
        assert len(rows) <= 1, f"several checkpoints for one table and worker: {rows}"
        if not rows:
            return None
        connection, table, worker, data, stamp = rows[0]
        return {
            "connection_name": connection,
            "table_name": table,
            "worker_id": worker,
            "checkpoint_data": json.loads(data) if isinstance(data, str) else data,
            "timestamp": stamp,
        }

    def checkpoint_count(self, prefix: str = "amp_") -> int:
        if not self.exists(f"{prefix}checkpoints"):
            return 0
        rows = self.query(
            f"SELECT count(*) FROM {prefix}checkpoints WHERE table_name = %s", (self.table,)
        )
        return int(rows[0][0])

    def history(self, prefix: str = "amp_") -> list[dict[str, Any]]:
        """This table's archived checkpoints, oldest first (``checkpoint_data`` parsed)."""
        if not self.exists(f"{prefix}checkpoint_history"):
            return []
        rows = self.query(
            f"SELECT checkpoint_data FROM {prefix}checkpoint_history "
            "WHERE connection_name = %s AND table_name = %s ORDER BY archived_at",
            (self.name, self.table),
        )
        return [json.loads(r[0]) if isinstance(r[0], str) else r[0] for r in rows]

    def processed(self, prefix: str = "amp_") -> list[tuple[int, int, str, str | None]]:
        """This table's processed ranges as (start, end, end_hash, batch_hash), sorted."""
        if not self.exists(f"{prefix}processed_ranges"):
            return []
        rows = self.query(
            f"SELECT start_block, end_block, end_hash, batch_hash FROM {prefix}processed_ranges "
            "WHERE connection_name = %s AND table_name = %s AND network = 'mainnet' "
            "ORDER BY start_block, end_block, end_hash",
            (self.name, self.table),
        )
        return [(int(a), int(b), str(h), c) for a, b, h, c in rows]


# -- comparison with the chain -----------------------------------------------------------


def assert_equals_chain(dest: Destination, chain: SimulatedChain, upto: int | None = None) -> int:
    """The test's table holds exactly the canonical rows (of blocks ``<= upto``); returns
    their number."""
    return assert_table(dest, dest.table, chain, columns=COLUMNS, upto=upto)


def assert_processed_canonical(dest: Destination, chain: SimulatedChain) -> None:
    """Every processed range ends at a block that is canonical now (a reorg forgets the
    ranges of the blocks it replaced)."""
    for start, end, end_hash, _ in dest.processed():
        assert end_hash == hex_hash(chain.canonical_hash(end)), (
            f"processed range {start}..{end} still recorded with a forked end hash"
        )


def load_to_head(
    srv: DevServer,
    dest: Destination,
    config: Mapping[str, Any],
    actions: Sequence[Action] = (),
    on_result: OnResult | None = None,
    mode: str = "append",
) -> Driven:
    """One run of the test's load (a restart is another call): ``kit.load_to_head``."""
    return drive_to_head(
        srv, dest.name, dest.kind, config, dest.table, actions, on_result, mode=mode
    )
