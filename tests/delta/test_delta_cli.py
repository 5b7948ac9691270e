"""``amp checkpoints list|reset`` and ``amp verify`` on a Delta destination
(``--to deltalake:///path``) after a real streaming load.

The checkpoint cycle is ``kit.checkpoints_cli.run_cycle`` (list, dry-run reset, reset,
reload from block 0). Verify compares the table read by delta-rs with the server: equal
after the load, and after faults planted with delta-rs (a deleted row, a duplicated
row, a row of a forked block) each found with exact counts in its block range.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from delta_support import TABLE, assert_exact, delta_config
from deltalake import DeltaTable, write_deltalake

from amp.devserver import DevServer
from amp.devserver.chain import SimulatedChain
from ampcli import amp
from kit import canonical_count, load_to_head, unique
from kit.checkpoints_cli import run_cycle

pytestmark = pytest.mark.timeout(240)

QUERY = "SELECT * FROM eth_firehose.logs"


def test_list_and_reset_checkpoints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with DevServer(port=0, seed=5, initial_blocks=60, max_interval=10) as server:
        run_cycle(
            capsys,
            server,
            "deltalake",
            delta_config(tmp_path),
            f"deltalake://{tmp_path}",
            TABLE,
            unique("dc"),
            lambda: assert_exact(tmp_path, server.chain),
        )


def _verify(server: DevServer, table_path: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    args = ("--server", server.url, "--query", QUERY, "--to", f"deltalake://{table_path}")
    with amp("verify", *args, "--table", TABLE, "--format", "json", *extra) as process:
        code, output = process.finish(timeout=180)
    reports = [line for line in output.splitlines() if line.startswith("{")]
    assert len(reports) == 1, f"exit {code}, no single JSON report:\n{output}"
    return code, json.loads(reports[0])


def _first_log(chain: SimulatedChain, block: int) -> tuple[int, int]:
    logs = chain.canonical_table("logs").select(["_block_num", "log_index"]).to_pylist()
    return min((row["_block_num"], row["log_index"]) for row in logs if row["_block_num"] >= block)


def _where(log: tuple[int, int]) -> str:
    return f"_block_num = {log[0]} AND log_index = {log[1]}"


def _row(table: DeltaTable, log: tuple[int, int]) -> pa.Table:
    rows = table.to_pyarrow_table()
    keep = pc.and_(pc.equal(rows["_block_num"], log[0]), pc.equal(rows["log_index"], log[1]))
    return rows.filter(keep)


def test_verify_finds_each_planted_fault(tmp_path: Path) -> None:
    with DevServer(port=0, seed=12, initial_blocks=120) as server:
        chain = server.chain
        config = delta_config(tmp_path, checkpoint=True)
        load_to_head(server, unique("dv"), "deltalake", config, TABLE)
        total = canonical_count(chain, 0, chain.head)

        code, report = _verify(server, tmp_path)
        assert code == 0, report
        assert report["equal"] is True
        assert report["server_rows"] == report["destination_rows"] == total
        assert report["block_column"] == "_block_num"

        location = f"{tmp_path}/{TABLE}"
        deleted, duplicated, forked = (_first_log(chain, b) for b in (20, 60, 100))
        DeltaTable(location).delete(_where(deleted))
        write_deltalake(location, _row(DeltaTable(location), duplicated), mode="append")
        fork = _row(DeltaTable(location), forked)
        fork = fork.set_column(
            fork.schema.get_field_index("block_hash"),
            "block_hash",
            pa.array([b"\xee" * 32], fork.schema.field("block_hash").type),
        )
        write_deltalake(location, fork, mode="append")

        code, report = _verify(server, tmp_path)
        assert code == 1, report
        assert (report["missing_rows"], report["duplicate_rows"], report["extra_rows"]) == (1, 1, 1)
        spans = [(r["first_block"], r["last_block"]) for r in report["ranges"]]
        assert spans == [(deleted[0], deleted[0]), (duplicated[0], duplicated[0]), (forked[0],) * 2]
        assert report["destination_rows"] == total + 1

        code, report = _verify(server, tmp_path, "--to-block", str(deleted[0] - 1))
        assert code == 0 and report["equal"] is True, report
