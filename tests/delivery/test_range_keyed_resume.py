"""A query without a block column, resumed from a checkpoint, then a reorg inside the
checkpointed microbatch: the whole microbatch is reloaded, nothing is lost (review
finding: the microbatch boundary used to be known only for microbatches of the run)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import duckdb

from amp.devserver import DevServer
from kit import load_to_head

QUERY = "SELECT tx_hash, log_index, data FROM eth_firehose.logs"


def _load_to_head(server: DevServer, database: Path) -> None:
    config = {"database": str(database), "checkpoint": {"enabled": True}}
    load_to_head(server, "range_keyed", "duckdb", config, "logs", query=QUERY)


def test_reorg_inside_the_checkpointed_microbatch_reloads_it_whole(tmp_path: Path) -> None:
    database = tmp_path / "range.duckdb"
    with DevServer(port=0, initial_blocks=100, max_interval=10) as server:
        _load_to_head(server, database)  # last microbatch 90..99, checkpointed
        server.chain.reorg(5)  # 95..99 replaced while the load is stopped
        server.chain.mine(1)
        _load_to_head(server, database)
        canonical = server.chain.canonical_table("logs").select(["tx_hash", "log_index", "data"])
    with duckdb.connect(str(database), read_only=True) as conn:
        rows = conn.execute("SELECT tx_hash, log_index, data FROM logs").fetchall()
    columns = [canonical.column(name).to_pylist() for name in canonical.column_names]
    expected = Counter(zip(*columns, strict=True))
    assert Counter((bytes(t), i, bytes(d)) for t, i, d in rows) == expected
