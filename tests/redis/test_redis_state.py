"""Checkpoints and processed ranges kept in Redis itself, in the microbatch's MULTI/EXEC.

Each run is a fresh Client, as a restarted process would be: with checkpoints it resumes
after the last committed microbatch (or at a reorg that happened while it was stopped);
with idempotency alone it replays from block 0 and skips every range it already holds.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from redis_support import (
    Names,
    assert_exact,
    redis_config,
    stored_rows,
)

from amp.client import Client
from amp.devserver import DevServer
from amp.errors import FatalLoadError
from amp.streaming.types import hex_hash
from kit import LOGS_QUERY, Action, Driven, Reorg, block_range, load_to_head

STRUCTURES = ("hash", "stream")
SEED = 1  # block 0 without logs: these tests are about state, not about genesis rows


def run_once(
    server: DevServer,
    names: Names,
    structure: str,
    *,
    checkpoint: bool,
    idempotency: bool,
    actions: list[Action] | None = None,
) -> Driven:
    """One process lifetime: a fresh client streams until it caught up with the head."""
    config = redis_config(structure, checkpoint=checkpoint, idempotency=idempotency)
    return load_to_head(server, names.connection, "redis", config, names.table, actions or [])


def load_checkpoint(client: redis.Redis, names: Names) -> dict[str, Any]:
    raw = client.get(names.checkpoint_key())
    assert raw is not None, f"no checkpoint at {names.checkpoint_key()}"
    return json.loads(raw)


def assert_checkpoint_at_head(client: redis.Redis, names: Names, server: DevServer) -> None:
    checkpoint = load_checkpoint(client, names)
    head = server.chain.head
    assert checkpoint["version"] == 1 and checkpoint["worker_id"] == 0, checkpoint
    assert checkpoint["is_reorg"] is False, checkpoint
    last = checkpoint["ranges"][-1]
    assert (last["network"], last["end"]) == ("mainnet", head), checkpoint
    assert last["hash"] == hex_hash(server.chain.canonical_hash(head)), checkpoint


def processed_ids(client: redis.Redis, names: Names) -> dict[str, int]:
    """The processed ranges (range id → end block), checked against their by-end index."""
    records = {k.decode(): json.loads(v) for k, v in client.hgetall(names.processed_key()).items()}
    by_end = {
        k.decode(): int(s)
        for k, s in client.zrange(names.processed_by_end_key(), 0, -1, withscores=True)
    }
    assert {k: r["end"] for k, r in records.items()} == by_end, "by-end index out of step"
    return by_end


def range_ids(driven: Driven, *operations: str) -> dict[str, int]:
    """The processed-range ids of the microbatches a run reported."""
    ids = {}
    for name in operations:
        for result in driven.of(name):
            numbers = block_range(result)
            key = f"{numbers['network']}:{numbers['start']}:{numbers['end']}:{numbers['hash']}"
            ids[key] = numbers["end"]
    return ids


@pytest.mark.parametrize("structure", STRUCTURES)
def test_restart_resumes_after_the_checkpoint(
    structure: str, redis_client: redis.Redis, names: Names
) -> None:
    with DevServer(port=0, seed=SEED, initial_blocks=40, max_interval=10) as server:
        first = run_once(server, names, structure, checkpoint=True, idempotency=True)
        assert first.ranges() == [(0, 9), (10, 19), (20, 29), (30, 39)]
        assert_checkpoint_at_head(redis_client, names, server)
        assert processed_ids(redis_client, names) == range_ids(first, "load")

        server.chain.mine(15)
        second = run_once(server, names, structure, checkpoint=True, idempotency=True)
        assert [result.metadata["operation"] for result in second.results] == ["load"] * 2
        assert second.ranges() == [(40, 49), (50, 54)], "the restart did not resume at 40"
        assert_checkpoint_at_head(redis_client, names, server)
        loaded = {**range_ids(first, "load"), **range_ids(second, "load")}
        assert processed_ids(redis_client, names) == loaded
        assert_exact(redis_client, names.table, structure, server.chain)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_reorg_while_stopped_is_found_on_resume(
    structure: str, redis_client: redis.Redis, names: Names
) -> None:
    with DevServer(port=0, seed=SEED, initial_blocks=40, max_interval=10) as server:
        first = run_once(server, names, structure, checkpoint=True, idempotency=True)
        stopped_at = load_checkpoint(redis_client, names)
        reorg = Reorg(5)
        reorg(server.chain)
        server.chain.mine(3)
        assert reorg.rows_replaced > 0

        second = run_once(server, names, structure, checkpoint=True, idempotency=True)
        head = second.results[0]
        assert head.metadata["operation"] == "reorg", "the resume did not find the reorg first"
        assert head.metadata["invalidated_range"]["start"] == 35, head.metadata
        assert head.metadata["rows_deleted"] == reorg.rows_replaced, head.metadata
        assert second.ranges() == [(35, 42)]
        assert_exact(redis_client, names.table, structure, server.chain)
        assert_checkpoint_at_head(redis_client, names, server)
        history = [json.loads(raw) for raw in redis_client.lrange(names.history_key(), 0, -1)]
        assert history == [stopped_at], "the superseded checkpoint was not archived"
        # The ranges of the replaced blocks are forgotten; the reloaded one is recorded.
        kept = {k: e for k, e in range_ids(first, "load").items() if e < 35}
        assert processed_ids(redis_client, names) == {**kept, **range_ids(second, "load")}


@pytest.mark.parametrize("structure", STRUCTURES)
def test_idempotency_without_checkpoints_skips_every_replayed_range(
    structure: str, redis_client: redis.Redis, names: Names
) -> None:
    with DevServer(port=0, seed=SEED, initial_blocks=40, max_interval=10) as server:
        first = run_once(server, names, structure, checkpoint=False, idempotency=True)
        before = stored_rows(redis_client, names.table, structure)
        server.chain.mine(5)

        second = run_once(server, names, structure, checkpoint=False, idempotency=True)
        assert second.ranges("skip_duplicate") == first.ranges(), "a replayed range was loaded"
        assert all(r.rows_loaded == 0 for r in second.of("skip_duplicate"))
        assert second.ranges() == [(40, 44)]
        assert redis_client.get(names.checkpoint_key()) is None
        after = stored_rows(redis_client, names.table, structure)
        assert {k: v for k, v in after.items() if int(v[b"_block_num"]) < 40} == before
        assert_exact(redis_client, names.table, structure, server.chain)


# (max_interval, initial blocks, blocks mined between the runs, expected ranges of run 2)
BOUNDARIES = {
    # Run 1 loads 0..29 as one microbatch, run 2 gets 0..41: nothing is a duplicate.
    "from-genesis": (1_000, 30, 12, [], [(0, 41)]),
    # Run 1 ends with 20..24, run 2 sends 20..29 over it.
    "mid-chain": (10, 25, 10, [(0, 9), (10, 19)], [(20, 29), (30, 34)]),
}


@pytest.mark.parametrize("variant", list(BOUNDARIES))
@pytest.mark.parametrize("structure", STRUCTURES)
def test_replay_with_different_boundaries_is_exact(
    structure: str, variant: str, redis_client: redis.Redis, names: Names
) -> None:
    max_interval, initial, mined, skipped, loaded = BOUNDARIES[variant]
    with DevServer(port=0, seed=SEED, initial_blocks=initial, max_interval=max_interval) as srv:
        run_once(srv, names, structure, checkpoint=False, idempotency=True)
        srv.chain.mine(mined)
        second = run_once(srv, names, structure, checkpoint=False, idempotency=True)
        assert second.ranges("skip_duplicate") == skipped
        assert second.ranges() == loaded
        assert_exact(redis_client, names.table, structure, srv.chain)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_failed_commit_leaves_no_checkpoint_behind(
    structure: str, redis_client: redis.Redis, names: Names
) -> None:
    """A key of the wrong type makes a command of the microbatch's EXEC fail. Redis does
    not roll back the other commands, so the checkpoint queued with them must not be
    among them: it would make a restart skip rows that were never stored."""
    occupied = names.table if structure == "stream" else f"{names.table}:_index"
    redis_client.set(occupied, "in the way")
    with DevServer(port=0, seed=SEED, initial_blocks=20, max_interval=10) as server:
        client = Client(server.url)
        config = redis_config(structure, checkpoint=True)
        config["resilience"] = {"retry": {"enabled": False}}
        client.configure_connection(names.connection, "redis", config)
        run = client.sql(LOGS_QUERY).load(names.connection, names.table, stream=True)
        try:
            with pytest.raises(FatalLoadError, match="WRONGTYPE"):
                for result in run:
                    assert not result.success, f"a microbatch committed: {result.metadata}"
        finally:
            run.close()
            client.close()
    assert redis_client.get(occupied) == b"in the way"
    checkpoint = redis_client.get(names.checkpoint_key())
    assert checkpoint is None, f"a failed MULTI/EXEC left its checkpoint: {checkpoint!r}"
