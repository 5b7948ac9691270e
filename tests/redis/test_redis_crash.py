"""Exactly once through crashes, into Redis: a real load process is killed with SIGKILL at
random moments while new blocks and reorgs arrive, and restarted each time. Afterwards
Redis must hold every canonical row exactly once, no row of a forked block, and a block
index with exactly one member per row.

The child is ``redis_load_child.py`` (a Client with the 'redis' loader, checkpoints and
idempotency) rather than ``amp load --to redis://…``, because it also picks the data
structure, which a URL cannot; the case of a query without a block column runs
``amp load`` (the hash structure).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis_support import Names, assert_exact, hash_rows, redis_config

from amp.devserver import DevServer
from crashkit import (
    RANGE_QUERY,
    assert_range_keyed_exactly_once,
    catch_up,
    crash_and_restart,
    crash_and_restart_amp_load,
    range_keyed_chain_server,
)
from kit import REDIS_DB, REDIS_HOST, REDIS_PORT, block_range

KILLS = 20
CHILD = Path(__file__).with_name("redis_load_child.py")


def crash_and_restart_load(
    server: DevServer, names: Names, structure: str, seed: int, past: int, client: redis.Redis
) -> None:
    """Start the child load and kill it KILLS times, each time while it runs (more on a
    slow machine, until a killed load has committed past block ``past``)."""
    command = [
        sys.executable, str(CHILD), "--server", server.url, "--table", names.table,
        "--connection", names.connection, "--structure", structure,
        "--host", REDIS_HOST, "--port", str(REDIS_PORT), "--db", str(REDIS_DB),
    ]  # fmt: skip

    def past_it() -> bool:
        raw = client.get(names.checkpoint_key())
        return raw is not None and int(json.loads(raw)["ranges"][-1]["end"]) > past

    crash_and_restart(command, names.connection, seed, kills=KILLS, window=1.0, until=past_it)


def checkpoint_end(client: redis.Redis, names: Names) -> int:
    raw = client.get(names.checkpoint_key())
    assert raw is not None, "the killed loads left no checkpoint"
    return int(json.loads(raw)["ranges"][-1]["end"])


@pytest.fixture
def busy_chain() -> Iterator[DevServer]:
    """A chain that grows 20 blocks a second with a reorg of depth 4 every 15 blocks."""
    with DevServer(
        port=0,
        seed=1,
        initial_blocks=300,
        max_interval=50,
        block_time=0.05,
        reorg_every=15,
        reorg_depth=4,
        mean_txs_per_block=20,
    ) as server:
        yield server


@pytest.mark.slow
@pytest.mark.parametrize("structure", ["hash", "stream"])
def test_redis_exactly_once_through_sigkills(
    structure: str, busy_chain: DevServer, redis_client: redis.Redis, names: Names
) -> None:
    initial_head = busy_chain.chain.head
    crash_and_restart_load(busy_chain, names, structure, 17, initial_head, redis_client)
    # What is checked below is the killed loads' work: they got past the initial blocks
    # (so kills hit loads at the head, among reorgs), and the catch-up resumes after them.
    resumed_from = checkpoint_end(redis_client, names)
    assert resumed_from > initial_head, "the killed loads never reached the growing head"
    config = redis_config(structure)
    driven = catch_up(busy_chain, names.connection, "redis", config, names.table)
    first = driven.results[0]
    if first.metadata["operation"] != "reorg":
        assert block_range(first)["start"] == resumed_from + 1, "the catch-up started over"
    assert len(busy_chain.chain.reorgs) >= 5, "the run should have seen reorgs"
    assert_exact(redis_client, names.table, structure, busy_chain.chain)
    assert checkpoint_end(redis_client, names) == busy_chain.chain.head


@pytest.mark.slow
def test_redis_range_keyed_rows_exactly_once_through_sigkills(
    redis_client: redis.Redis, names: Names
) -> None:
    """A query without a block column (``amp load``, hash structure): rows are indexed by
    their microbatch's range end, and a reorg deletes whole microbatches through it."""
    url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"
    with range_keyed_chain_server() as server:
        lines = crash_and_restart_amp_load(
            server, url, names.table, names.connection, seed=31, query=RANGE_QUERY
        )
        catch_up(server, names.connection, "redis", redis_config(), names.table, RANGE_QUERY)
        stored = hash_rows(redis_client, names.table, block_field=b"_amp_block_end")
        rows = [  # RANGE_COLUMNS, then the range
            (
                fields[b"tx_hash"],
                int(fields[b"log_index"]),
                fields[b"block_hash"],
                fields[b"data"],
                int(fields[b"_amp_block_start"]),
                int(fields[b"_amp_block_end"]),
            )
            for fields in stored.values()
        ]
        assert_range_keyed_exactly_once(rows, server.chain, lines, f"redis {names.table}")
