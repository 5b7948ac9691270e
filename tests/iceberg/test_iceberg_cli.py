"""The operator's commands on an Iceberg destination (``--to iceberg://<dir>``):
``amp checkpoints list|reset`` after a real load (the shared cycle), and ``amp verify``,
which reads the table by block range with pyiceberg and finds a deleted, a duplicated
and a forked row planted with pyiceberg, each in its block."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from iceberg_support import Lake, assert_exact

from amp.devserver import DevServer
from kit import LOGS_QUERY, load_to_head
from kit.checkpoints_cli import run_amp, run_cycle

pytestmark = pytest.mark.timeout(240)


def test_list_and_reset_checkpoints(lake: Lake, capsys: pytest.CaptureFixture[str]) -> None:
    with DevServer(port=0, seed=5, initial_blocks=60, max_interval=10) as server:
        run_cycle(
            capsys,
            server,
            "iceberg",
            lake.config(),
            lake.url,
            "logs",
            "cpconn",
            lambda: assert_exact(lake.table("logs"), server.chain),
        )


def _verify(capsys: pytest.CaptureFixture[str], server: DevServer, lake: Lake) -> tuple[int, dict]:
    code, out = run_amp(
        capsys, "verify", "--server", server.url, "--query", LOGS_QUERY, "--to", lake.url,
        "--table", "logs", "--format", "json",
    )  # fmt: skip
    reports = [line for line in out.splitlines() if line.startswith("{")]
    assert len(reports) == 1, f"exit {code}, no single JSON report:\n{out}"
    return code, json.loads(reports[0])


def _row(table: pa.Table, block: int) -> pa.Table:
    """The first stored log of ``block``."""
    return table.filter(pc.equal(table.column("_block_num"), block)).slice(0, 1)


def test_verify_finds_each_planted_fault(lake: Lake, capsys: pytest.CaptureFixture[str]) -> None:
    with DevServer(port=0, seed=12, initial_blocks=120) as server:
        load_to_head(server, "verify", "iceberg", lake.config(checkpoint={"enabled": True}), "logs")
        code, report = _verify(capsys, server, lake)
        assert code == 0 and report["equal"] is True, report
        assert report["block_column"] == "_block_num"
        assert {"block_hash", "log_index", "data", "timestamp"} <= set(report["columns"])

        table = lake.table("logs")
        stored = table.scan().to_arrow()
        blocks = sorted(set(stored.column("_block_num").to_pylist()))
        deleted = _row(stored, blocks[10])
        duplicated = _row(stored, blocks[30])
        forked = _row(stored, blocks[50])
        hashes = pa.array([b"\xee" * 32], forked.schema.field("block_hash").type)
        forked = forked.set_column(
            forked.schema.get_field_index("block_hash"), forked.schema.field("block_hash"), hashes
        )
        from pyiceberg.expressions import And, EqualTo

        with table.transaction() as txn:
            txn.delete(
                And(
                    EqualTo("_block_num", deleted.column("_block_num")[0].as_py()),
                    EqualTo("log_index", deleted.column("log_index")[0].as_py()),
                )
            )
            txn.append(pa.concat_tables([duplicated, forked]))

        code, report = _verify(capsys, server, lake)
        assert code == 1, report
        counts = (report["missing_rows"], report["duplicate_rows"], report["extra_rows"])
        assert counts == (1, 1, 1), report
        spans = [(r["first_block"], r["missing_rows"], r["duplicate_rows"], r["extra_rows"])
                 for r in report["ranges"]]  # fmt: skip
        assert spans == [(blocks[10], 1, 0, 0), (blocks[30], 0, 1, 0), (blocks[50], 0, 0, 1)]
