"""Read a Redis destination back and compare it with the dev server's canonical chain.

The Redis of the suite runs at 127.0.0.1:6379; every test writes to db 9 under key names
that are unique to it (``rt_<hex>`` tables, ``rc_<hex>`` connections) and deletes them
afterwards, so other databases and other runs are left alone.

A hash-structured table is read only through its block index (``<table>:_index``): every
member is HGETALL'd, and the keys under ``<table>:`` must be exactly the members plus the
index. A stream-structured table is read with XRANGE. Rows are compared as
``(block_num, log_index, block_hash, data)``: the key of a log, its block's hash (a forked
row differs there) and a binary column with NUL bytes and empty values.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow.compute as pc
import pytest
import redis

from amp.client import LoadResult, LoadRun
from amp.devserver.chain import SimulatedChain
from amp.streaming.types import hex_hash

REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379
REDIS_DB = 9
QUERY = "SELECT * FROM eth_firehose.logs"
ROW_COLUMNS = ("block_num", "log_index", "block_hash", "data")
# A runaway stream (reloading the same data forever) fails instead of hanging.
MAX_RESULTS = 2_000

Row = tuple[int, int, bytes, bytes]
Fields = dict[bytes, bytes]


def connect_redis() -> redis.Redis:
    """A client of the test database, or a test failure saying Redis is not there."""
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB, socket_timeout=30)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(
            f"Redis at {REDIS_HOST}:{REDIS_PORT} is not reachable: {exc}; the Redis tests "
            "need a real server there (run `make services`)",
            pytrace=False,
        )
    return client


@dataclass(frozen=True)
class Names:
    """The table and connection names of one test (unique, so cleanup is exact)."""

    table: str
    connection: str

    @classmethod
    def fresh(cls) -> Names:
        tag = uuid.uuid4().hex[:10]
        return cls(f"rt_{tag}", f"rc_{tag}")

    def patterns(self) -> list[str]:
        return [f"{self.table}", f"{self.table}:*", f"amp_*:{self.connection}:*"]

    def checkpoint_key(self) -> str:
        return f"amp_checkpoint:{self.connection}:{self.table}:0"

    def history_key(self) -> str:
        return f"amp_checkpoint_history:{self.connection}:{self.table}"

    def processed_key(self) -> str:
        return f"amp_processed:{self.connection}:{self.table}"

    def processed_by_end_key(self) -> str:
        return f"amp_processed_by_end:{self.connection}:{self.table}"


def delete_keys(client: redis.Redis, names: Names) -> None:
    """Delete every key of this test (SCAN is fine here: it is the test's cleanup)."""
    for pattern in names.patterns():
        keys = list(client.scan_iter(match=pattern, count=1_000))
        for first in range(0, len(keys), 1_000):
            client.delete(*keys[first : first + 1_000])


def redis_config(
    structure: str = "hash", *, checkpoint: bool = False, idempotency: bool = False
) -> dict[str, Any]:
    """The amp connection config of the test Redis."""
    config: dict[str, Any] = {"host": REDIS_HOST, "port": REDIS_PORT, "db": REDIS_DB}
    if structure != "hash":
        config["data_structure"] = structure
    if checkpoint:
        config["checkpoint"] = {"enabled": True}
    if idempotency:
        config["idempotency"] = {"enabled": True}
    return config


# -- the oracle -------------------------------------------------------------------------


def canonical_rows(chain: SimulatedChain) -> Counter[Row]:
    """Every canonical log now, as comparable tuples."""
    table = chain.canonical_table("logs").select(list(ROW_COLUMNS))
    return Counter(
        (int(r["block_num"]), int(r["log_index"]), bytes(r["block_hash"]), bytes(r["data"]))
        for r in table.to_pylist()
    )


def canonical_count(chain: SimulatedChain, start: int, end: int) -> int:
    """Canonical logs of blocks ``start..end``."""
    blocks = chain.canonical_table("logs").column("block_num")
    inside = pc.and_(pc.greater_equal(blocks, start), pc.less_equal(blocks, end))
    return int(pc.sum(inside.cast("int64")).as_py() or 0)


def row_of(fields: Fields) -> Row:
    return (
        int(fields[b"block_num"]),
        int(fields[b"log_index"]),
        fields[b"block_hash"],
        fields[b"data"],
    )


# -- reading the destination ------------------------------------------------------------


def index_members(client: redis.Redis, table: str) -> dict[str, int]:
    """The block index: row key → block number."""
    return {
        key.decode(): int(score)
        for key, score in client.zrange(f"{table}:_index", 0, -1, withscores=True)
    }


def hash_rows(client: redis.Redis, table: str) -> dict[str, Fields]:
    """Every row of a hash table, read through its index; checks the index is exact:
    one member per row, its score the row's block, no key under ``table:`` outside it."""
    index = index_members(client, table)
    pipe = client.pipeline(transaction=False)
    for key in index:
        pipe.hgetall(key)
    rows = dict(zip(index, pipe.execute(), strict=True))
    missing = [key for key, fields in rows.items() if not fields]
    assert not missing, f"{len(missing)} index members have no hash, e.g. {missing[:3]}"
    wrong = [k for k, f in rows.items() if int(f[b"_block_num"]) != index[k]]
    assert not wrong, f"index scores differ from the rows' _block_num: {wrong[:3]}"
    present = {key.decode() for key in client.scan_iter(match=f"{table}:*", count=1_000)}
    extra = present - set(index) - {f"{table}:_index"}
    assert not extra, f"{len(extra)} keys outside the index, e.g. {sorted(extra)[:3]}"
    assert not client.exists(table), f"a hash-structured load created the key {table!r}"
    return rows


def stream_rows(client: redis.Redis, table: str) -> dict[str, Fields]:
    """Every entry of a stream table by id; checks the ids are ``<block>-<n>`` of the
    entry's own block and that nothing else was created under ``table:``."""
    entries = {entry_id.decode(): fields for entry_id, fields in client.xrange(table)}
    wrong = [i for i, f in entries.items() if int(i.split("-")[0]) != int(f[b"_block_num"])]
    assert not wrong, f"stream ids whose block is not the entry's _block_num: {wrong[:3]}"
    extra = sorted(key.decode() for key in client.scan_iter(match=f"{table}:*", count=1_000))
    assert not extra, f"a stream-structured load created keys {extra[:3]}"
    return entries


def stored_rows(client: redis.Redis, table: str, structure: str) -> dict[str, Fields]:
    return hash_rows(client, table) if structure == "hash" else stream_rows(client, table)


def assert_exact(client: redis.Redis, table: str, structure: str, chain: SimulatedChain) -> None:
    """The destination holds exactly the canonical logs: each once, nothing else."""
    stored = stored_rows(client, table, structure)
    ours = Counter(row_of(fields) for fields in stored.values())
    duplicates = {row[:2]: n for row, n in ours.items() if n > 1}
    assert not duplicates, f"{len(duplicates)} rows stored twice, e.g. {list(duplicates)[:3]}"
    expected = canonical_rows(chain)
    missing, extra = expected - ours, ours - expected
    assert not missing and not extra, (
        f"{len(stored)} rows stored, {sum(expected.values())} canonical; missing "
        f"{len(missing)} (e.g. blocks {sorted({r[0] for r in missing})[:5]}), extra "
        f"{len(extra)} (e.g. blocks {sorted({r[0] for r in extra})[:5]})"
    )


# -- driving a streaming load -----------------------------------------------------------


def block_range(result: LoadResult) -> dict[str, Any]:
    ranges = result.metadata.get("block_ranges")
    assert isinstance(ranges, list) and len(ranges) == 1, f"bad block_ranges: {result.metadata}"
    return ranges[0]


def operation(result: LoadResult) -> str:
    return str(result.metadata.get("operation"))


def caught_up(result: LoadResult, chain: SimulatedChain) -> bool:
    """A microbatch (loaded or skipped) that ends at the current canonical head."""
    if operation(result) not in ("load", "skip_duplicate"):
        return False
    numbers = block_range(result)
    head = chain.head
    return numbers["end"] == head and numbers["hash"] == hex_hash(chain.canonical_hash(head))


@dataclass
class Mine:
    count: int

    def __call__(self, chain: SimulatedChain) -> None:
        chain.mine(self.count)


@dataclass
class Reorg:
    """A reorg of ``depth`` blocks; records what the load must report for it."""

    depth: int
    fork_height: int = -1
    old_head: int = -1
    rows_replaced: int = -1

    def __call__(self, chain: SimulatedChain) -> None:
        with chain.changed:
            self.old_head = chain.head
            self.fork_height = chain.head - self.depth + 1
            self.rows_replaced = canonical_count(chain, self.fork_height, self.old_head)
            chain.reorg(self.depth)


Action = Callable[[SimulatedChain], None]


@dataclass
class Driven:
    results: list[LoadResult] = field(default_factory=list)

    def of(self, name: str) -> list[LoadResult]:
        return [r for r in self.results if operation(r) == name]

    def ranges(self, name: str = "load") -> list[tuple[int, int]]:
        return [(block_range(r)["start"], block_range(r)["end"]) for r in self.of(name)]


def drive(run: LoadRun, chain: SimulatedChain, actions: Sequence[Action] = ()) -> Driven:
    """Iterate ``run``; each time it has caught up with the head, apply the next action;
    return once it has caught up after the last one. No sleeps: the dev server sends
    nothing until the chain changes. Closes ``run`` whatever happens."""
    driven = Driven()
    remaining = list(actions)
    try:
        for result in run:
            driven.results.append(result)
            assert result.success, f"the load reported a failure: {result.error}"
            if caught_up(result, chain):
                if not remaining:
                    return driven
                remaining.pop(0)(chain)
            assert len(driven.results) < MAX_RESULTS, f"no end in sight: {driven.ranges()[-5:]}"
    finally:
        run.close()
    raise AssertionError(f"the streaming load ended by itself after {len(driven.results)} results")


def assert_reorgs_reported(driven: Driven, reorgs: Sequence[Reorg]) -> None:
    """One reorg result per reorg, from its fork height, deleting the rows it replaced."""
    reported = driven.of("reorg")
    assert len(reported) == len(reorgs), [r.metadata for r in reported]
    for made, result in zip(reorgs, reported, strict=True):
        invalidated = result.metadata["invalidated_range"]
        assert invalidated["start"] == made.fork_height, (made, invalidated)
        assert invalidated["end"] >= made.old_head, (made, invalidated)
        assert result.metadata["rows_deleted"] == made.rows_replaced, (
            f"reorg of depth {made.depth} at {made.old_head}: the destination held "
            f"{made.rows_replaced} rows of the replaced blocks, rows_deleted says "
            f"{result.metadata['rows_deleted']}"
        )


# -- watching what the loader sends -----------------------------------------------------


class CommandLog:
    """Every command Redis runs on the test db while the block is active (MONITOR)."""

    def __init__(self) -> None:
        self.client = connect_redis()
        self.commands: list[list[str]] = []
        self._sentinel = f"end-of-log-{uuid.uuid4().hex}"
        self._monitor: Any = None
        self._thread = threading.Thread(target=self._read, daemon=True)

    def __enter__(self) -> CommandLog:
        self._monitor = self.client.monitor()
        self._monitor.__enter__()
        self._thread.start()
        return self

    def _read(self) -> None:
        while True:
            command = self._monitor.next_command()
            if command is None or command["db"] != REDIS_DB:
                continue
            args = command["command"].split(" ")
            if args == ["ECHO", self._sentinel]:
                return
            self.commands.append(args)

    def __exit__(self, *exc_info: object) -> None:
        if self._monitor is None:  # never entered
            return
        self.client.echo(self._sentinel)  # seen after everything sent before it
        self._thread.join(timeout=60)
        assert not self._thread.is_alive(), "MONITOR never saw the end-of-log ECHO"
        self._monitor.__exit__()

    def named(self, *names: str) -> Iterator[list[str]]:
        wanted = {name.upper() for name in names}
        return (args for args in self.commands if args[0].upper() in wanted)
