"""Checkpoints (resilience guide §4): the table, one row advancing with every microbatch,
the resume right after it with the guide's log lines, and nothing written when off."""

from __future__ import annotations

import ast
import re
from datetime import datetime
from typing import Any

import pytest
from delivery_support import (
    Destination,
    assert_equals_chain,
    load_to_head,
)

from amp.client import LoadResult
from amp.devserver import DevServer
from kit import block_range, operation

pytestmark = pytest.mark.timeout(60)

CHECKPOINT = {"checkpoint": {"enabled": True}}
GUIDE_COLUMNS = [
    "connection_name",
    "table_name",
    "worker_id",
    "checkpoint_data",
    "timestamp",
    "metadata",
]


def messages(caplog: pytest.LogCaptureFixture, level: str | None = None) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name.startswith("amp") and (level is None or record.levelname == level)
    ]


def assert_checkpoint_is(dest: Destination, expected_range: dict[str, Any]) -> dict[str, Any]:
    """The table's checkpoint row holds exactly ``expected_range`` (not a reorg one)."""
    row = dest.checkpoint()
    assert row is not None, f"no checkpoint row for {dest.name}/{dest.table}"
    assert (row["connection_name"], row["table_name"], row["worker_id"]) == (
        dest.name,
        dest.table,
        0,
    )
    data = row["checkpoint_data"]
    assert data["ranges"] == [expected_range], (
        f"checkpoint {data['ranges']} is not the last committed microbatch {expected_range}"
    )
    assert data["is_reorg"] is False
    assert data["worker_id"] == 0
    datetime.fromisoformat(data["timestamp"])
    assert isinstance(row["timestamp"], datetime)
    return data


def test_checkpoint_advances_and_restart_resumes_after_it(
    srv: DevServer, dest: Destination, amp_logs: pytest.LogCaptureFixture
) -> None:
    # One commit per microbatch (the guide's description), so each result has its own.
    config = dest.config(**CHECKPOINT)
    seen: list[dict[str, Any]] = []

    def check(result: LoadResult) -> None:
        assert operation(result) == "load", result.metadata
        seen.append(assert_checkpoint_is(dest, block_range(result)))

    first = load_to_head(srv, dest, config, on_result=check)
    assert len(seen) == 10, f"one checkpoint per microbatch of 10 blocks: {len(seen)}"
    assert [d["ranges"][0]["end"] for d in seen] == list(range(9, 100, 10))

    lines = messages(amp_logs)
    assert f"Loading checkpoint for connection={dest.name}, table={dest.table}" in lines
    assert f"No checkpoint found for connection={dest.name}, table={dest.table}" in messages(
        amp_logs, "DEBUG"
    )
    assert "Starting fresh streaming query" in messages(amp_logs, "INFO")
    assert block_range(first.results[0])["start"] == 0

    # The table and its primary key, as the guide's schema says.
    assert dest.columns("amp_checkpoints") == GUIDE_COLUMNS
    assert dest.primary_key("amp_checkpoints") == ["connection_name", "table_name", "worker_id"]

    saved = dest.checkpoint()
    assert saved is not None
    last = saved["checkpoint_data"]["ranges"][0]
    srv.chain.mine(15)
    amp_logs.clear()
    second = load_to_head(srv, dest, config, on_result=check)

    assert block_range(second.results[0])["start"] == last["end"] + 1, (
        "a restart must resume right after the checkpoint"
    )
    assert block_range(second.results[0])["prev_hash"] == last["hash"]
    assert sum(r.rows_loaded for r in first.results + second.results) == assert_equals_chain(
        dest, srv.chain
    )
    info = messages(amp_logs, "INFO")
    assert f"Loading checkpoint for connection={dest.name}, table={dest.table}" in info
    resuming = [line for line in info if line.startswith("Resuming from checkpoint:")]
    assert len(resuming) == 1, info
    assert re.fullmatch(
        r"Resuming from checkpoint: 1 ranges, is_reorg=false, "
        r"timestamp \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d",
        resuming[0],
    ), resuming[0]
    watermark = [line for line in info if line.startswith("Resuming stream from watermark: ")]
    assert len(watermark) == 1, info
    shown = ast.literal_eval(watermark[0].removeprefix("Resuming stream from watermark: "))
    assert shown == {"ranges": [last]}, watermark[0]
    assert "Starting fresh streaming query" not in info


def test_checkpoints_are_off_by_default(srv: DevServer, dest: Destination) -> None:
    run = load_to_head(srv, dest, dest.config())
    assert assert_equals_chain(dest, srv.chain) == sum(r.rows_loaded for r in run.results)
    assert dest.checkpoint_count() == 0, "checkpoints are written although not enabled"
    assert dest.processed() == [], "processed ranges are written although not enabled"
