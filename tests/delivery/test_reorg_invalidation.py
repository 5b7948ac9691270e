"""Reorgs (protocol §3-§4, guide §4 "Reorg Handling"): while streaming, deeper than a
microbatch, while the loader is stopped (found on resume by hash), several at once.
Every scenario ends with the destination equal to the canonical chain, the checkpoint on
the last microbatch, the replaced checkpoints in the history table and no processed
range of a forked block."""

from __future__ import annotations

import re

import pytest
from delivery_support import (
    Destination,
    assert_equals_chain,
    assert_processed_canonical,
    load_to_head,
)

from amp.client import LoadResult
from amp.devserver import DevServer
from amp.devserver.chain import SimulatedChain
from amp.streaming.types import hex_hash
from kit import ChainChange, Driven, assert_reorgs_reported, block_range, canonical_count, operation

pytestmark = pytest.mark.timeout(60)

FEATURES = {"checkpoint": {"enabled": True}, "idempotency": {"enabled": True}}
MAX_INTERVAL = 10  # the srv fixture's microbatch size


def assert_state_consistent(dest: Destination, run: Driven, chain: SimulatedChain) -> None:
    """The checkpoint is the last committed microbatch; no forked range is 'processed'."""
    checkpoint = dest.checkpoint()
    assert checkpoint is not None
    assert checkpoint["checkpoint_data"]["ranges"] == [block_range(run.loads()[-1])]
    assert checkpoint["checkpoint_data"]["is_reorg"] is False
    assert_processed_canonical(dest, chain)


@pytest.mark.parametrize(
    "steps",
    [
        pytest.param([(("reorg", 1),), (("reorg", 1), ("mine", 3))], id="depth1"),
        pytest.param([(("reorg", 25),)], id="deeper-than-a-microbatch"),
        pytest.param(
            [(("reorg", 2), ("reorg", 3), ("mine", 2), ("reorg", 1))], id="three-in-a-row"
        ),
    ],
)
def test_reorg_while_streaming(
    srv: DevServer, dest: Destination, steps: list[tuple[tuple[str, int], ...]]
) -> None:
    changes = [ChainChange(*s) for s in steps]
    run = load_to_head(srv, dest, dest.config(**FEATURES), actions=changes)

    assert_reorgs_reported(run, changes, MAX_INTERVAL)
    assert_equals_chain(dest, srv.chain)
    assert_state_consistent(dest, run, srv.chain)
    archived = dest.history()
    assert len(archived) == len(changes), "each reorg archives the checkpoint it replaces"
    for change, old in zip(changes, archived, strict=True):
        assert old["is_reorg"] is False
        assert old["ranges"][0]["end"] == change.old_head


@pytest.mark.parametrize("depth", [3, 25])
def test_reorg_while_stopped_is_found_on_resume(
    srv: DevServer, dest: Destination, amp_logs: pytest.LogCaptureFixture, depth: int
) -> None:
    config = dest.config(**FEATURES)
    load_to_head(srv, dest, config)
    before = dest.checkpoint()
    assert before is not None
    assert before["checkpoint_data"]["ranges"][0]["end"] == 99
    change = ChainChange(("reorg", depth))
    change(srv.chain)  # blocks fork..99 replaced while no load runs
    fork = change.fork_height

    def stop_after_first(_result: LoadResult) -> bool:
        return True

    # Restart: the checkpoint's block 99 is forked; stop right after the first result.
    second = load_to_head(srv, dest, config, on_result=stop_after_first)
    first = second.results[0]
    assert operation(first) == "reorg", f"the reorg must be reported first: {first.metadata}"
    invalidated = first.metadata["invalidated_range"]
    assert (invalidated["start"], invalidated["end"]) == (fork, 99)
    assert first.metadata["rows_deleted"] == change.rows_replaced

    saved = dest.checkpoint()
    assert saved is not None
    data = saved["checkpoint_data"]
    assert data["is_reorg"] is True
    assert len(data["ranges"]) == 1
    point = data["ranges"][0]
    assert (point["network"], point["start"], point["end"]) == ("mainnet", fork - 1, fork - 1)
    assert point["hash"] == hex_hash(srv.chain.canonical_hash(fork - 1)), "the fork's parent"
    assert dest.history() == [before["checkpoint_data"]], "the old checkpoint is kept for audit"
    assert_equals_chain(dest, srv.chain, upto=fork - 1)

    amp_logs.clear()
    third = load_to_head(srv, dest, config)
    info = [r.getMessage() for r in amp_logs.records if r.levelname == "INFO"]
    resumed = [line for line in info if line.startswith("Resuming from reorg checkpoint")]
    assert len(resumed) == 1, info
    assert re.fullmatch(
        r"Resuming from reorg checkpoint: 1 ranges, is_reorg=true, "
        r"timestamp \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d",
        resumed[0],
    ), resumed[0]
    assert f"Reorg resume points: mainnet:{fork}" in info
    assert not any(line.startswith("Resuming from checkpoint:") for line in info)
    assert operation(third.results[0]) == "load"
    assert block_range(third.results[0])["start"] == fork
    assert_equals_chain(dest, srv.chain)
    assert_state_consistent(dest, third, srv.chain)


def test_reorg_of_a_reorg_checkpoint_while_stopped(srv: DevServer, dest: Destination) -> None:
    """The fork point saved by one reorg is itself replaced by a second reorg while the
    loader is stopped: the resume finds that by hash too."""
    config = dest.config(**FEATURES)
    load_to_head(srv, dest, config)
    ChainChange(("reorg", 3))(srv.chain)  # 97..99

    def stop_after_first(_result: LoadResult) -> bool:
        return True

    second = load_to_head(srv, dest, config, on_result=stop_after_first)
    assert operation(second.results[0]) == "reorg"
    saved = dest.checkpoint()
    assert saved is not None and saved["checkpoint_data"]["is_reorg"] is True
    assert saved["checkpoint_data"]["ranges"][0]["end"] == 96

    held = canonical_count(srv.chain, 92, 96)  # the destination holds blocks up to 96
    ChainChange(("reorg", 8), ("mine", 4))(srv.chain)  # 92..99 replaced, 100..103 new
    third = load_to_head(srv, dest, config)
    first = third.results[0]
    assert operation(first) == "reorg", first.metadata
    invalidated = first.metadata["invalidated_range"]
    assert invalidated["start"] == 92
    assert first.metadata["rows_deleted"] == held
    assert [r["is_reorg"] for r in dest.history()] == [False, True]
    assert_equals_chain(dest, srv.chain)
    assert_state_consistent(dest, third, srv.chain)
