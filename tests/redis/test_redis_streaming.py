"""Streaming loads into Redis through reorgs: the destination ends with exactly the
canonical rows, for both layouts (hashes with a block index, and a stream), and a reorg
deletes exactly the rows of the replaced blocks, found through the index (never SCAN).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis
from redis_support import (
    CommandLog,
    Fields,
    Names,
    assert_exact,
    index_members,
    redis_config,
    stored_rows,
)

from amp.devserver import DevServer
from amp.devserver.chain import SimulatedChain
from kit import Action, Mine, Reorg, assert_reorgs_reported, load_to_head

STRUCTURES = ("hash", "stream")
# Seed 1's block 0 has no logs; rows of block 0 have their own test below.
SEED = 1
MAX_INTERVAL = 10

SCENARIOS: dict[str, Callable[[], list[Action]]] = {
    "depth-1": lambda: [Reorg(1), Mine(4), Reorg(1), Mine(2), Reorg(1)],
    "depth-2": lambda: [Reorg(2), Mine(3), Reorg(2), Mine(1), Reorg(2)],
    # 25 blocks span three microbatches of 10, the first of them only partly.
    "deeper-than-a-microbatch": lambda: [Reorg(25), Mine(6), Reorg(25)],
}


def load_through(
    server: DevServer, names: Names, structure: str, actions: list[Action]
) -> list[Reorg]:
    """Stream the logs into Redis, applying ``actions`` each time the load caught up."""
    config = redis_config(structure)
    driven = load_to_head(server, names.connection, "redis", config, names.table, actions)
    reorgs = [action for action in actions if isinstance(action, Reorg)]
    assert_reorgs_reported(driven, reorgs)
    return reorgs


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("structure", STRUCTURES)
def test_streaming_load_through_reorgs_is_exact(
    structure: str, scenario: str, redis_client: redis.Redis, names: Names
) -> None:
    with DevServer(port=0, seed=SEED, initial_blocks=60, max_interval=MAX_INTERVAL) as server:
        reorgs = load_through(server, names, structure, SCENARIOS[scenario]())
        assert any(reorg.rows_replaced > 0 for reorg in reorgs), "no reorg replaced any row"
        assert_exact(redis_client, names.table, structure, server.chain)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_rows_of_block_zero_are_loaded(
    structure: str, redis_client: redis.Redis, names: Names
) -> None:
    """Seed 2's genesis block has 19 logs: a stream entry id ``0-0`` is not allowed."""
    with DevServer(port=0, seed=2, initial_blocks=25, max_interval=MAX_INTERVAL) as server:
        genesis = server.chain.canonical_table("logs").column("block_num").to_pylist().count(0)
        assert genesis > 0, "the test needs logs in block 0"
        load_through(server, names, structure, [])
        assert_exact(redis_client, names.table, structure, server.chain)


class WatchedReorg(Reorg):
    """A reorg that first snapshots the destination and starts logging Redis commands."""

    def __init__(self, depth: int, client: redis.Redis, names: Names, structure: str) -> None:
        super().__init__(depth)
        self.client, self.names, self.structure = client, names, structure
        self.before: dict[str, Fields] = {}
        self.index_before: dict[str, int] = {}
        self.log = CommandLog()

    def __call__(self, chain: SimulatedChain) -> None:
        self.before = stored_rows(self.client, self.names.table, self.structure)
        self.index_before = index_members(self.client, self.names.table)
        self.log.__enter__()
        super().__call__(chain)


def assert_canonical_blocks(rows: dict[str, Fields], chain: SimulatedChain) -> None:
    """No row of a forked block: every row carries its block's canonical hash."""
    forked = {
        key
        for key, fields in rows.items()
        if fields[b"block_hash"] != chain.canonical_hash(int(fields[b"block_num"]))
    }
    assert not forked, f"{len(forked)} rows of forked blocks remain, e.g. {sorted(forked)[:3]}"


@pytest.mark.parametrize("structure", STRUCTURES)
def test_reorg_deletes_exactly_the_replaced_rows_through_the_index(
    structure: str, redis_client: redis.Redis, names: Names
) -> None:
    with DevServer(port=0, seed=SEED, initial_blocks=60, max_interval=MAX_INTERVAL) as server:
        reorg = WatchedReorg(25, redis_client, names, structure)
        try:
            load_through(server, names, structure, [reorg])
        finally:
            reorg.log.__exit__(None, None, None)
        after = stored_rows(redis_client, names.table, structure)
        before, fork = reorg.before, reorg.fork_height
        replaced = {key for key, f in before.items() if int(f[b"_block_num"]) >= fork}
        kept = set(before) - replaced
        assert replaced and kept, "the reorg should replace some rows and keep others"
        assert len(replaced) == reorg.rows_replaced

        # The replaced rows are gone (a stream id comes back holding the new block's row),
        # the others untouched; no forked row anywhere.
        stale = sorted(key for key in replaced & set(after) if after[key] == before[key])
        assert not stale, f"replaced rows remain: {stale[:5]}"
        if structure == "hash":
            assert not replaced & set(after), "the keys of replaced rows were reused"
        assert all(after.get(key) == before[key] for key in kept), "rows before the fork changed"
        assert_canonical_blocks(after, server.chain)
        assert_exact(redis_client, names.table, structure, server.chain)

        # Found through the index (or the stream's id range), never by scanning keys.
        log = reorg.log
        scans = list(log.named("SCAN", "KEYS"))
        assert not scans, f"the loader scanned the keyspace: {scans[:3]}"
        if structure == "hash":
            index = f"{names.table}:_index"
            assert ["ZRANGEBYSCORE", index, str(fork), str(server.chain.head)] in log.commands
            deleted = {key for args in log.named("DEL") for key in args[1:]}
            assert deleted & set(before) == replaced, "DEL did not hit exactly the replaced rows"
            assert [args for args in log.named("ZREMRANGEBYSCORE") if args[1] == index]
            index_after = index_members(redis_client, names.table)
            assert all(index_after[key] == reorg.index_before[key] for key in kept)
        else:
            deleted = {entry for args in log.named("XDEL") for entry in args[2:]}
            assert deleted == replaced, "XDEL did not hit exactly the replaced entries"
            last_kept = max(kept, key=lambda entry: tuple(map(int, entry.split("-"))))
            assert ["XSETID", names.table, last_kept] in log.commands
