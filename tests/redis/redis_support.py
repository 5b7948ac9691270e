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
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import redis

from amp.devserver.chain import SimulatedChain
from kit import REDIS_DB, REDIS_HOST, REDIS_PORT, connect_redis

ROW_COLUMNS = ("block_num", "log_index", "block_hash", "data")

Row = tuple[int, int, bytes, bytes]
Fields = dict[bytes, bytes]


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


def canonical_rows(chain: SimulatedChain, blocks: tuple[int, int] | None = None) -> Counter[Row]:
    """Every canonical log now (of blocks ``blocks[0]..blocks[1]`` when given), as
    comparable tuples."""
    table = chain.canonical_table("logs").select(list(ROW_COLUMNS))
    return Counter(
        (int(r["block_num"]), int(r["log_index"]), bytes(r["block_hash"]), bytes(r["data"]))
        for r in table.to_pylist()
        if blocks is None or blocks[0] <= r["block_num"] <= blocks[1]
    )


def row_of(fields: Fields) -> Row:
    return (
        int(fields[b"block_num"]),
        int(fields[b"log_index"]),
        fields[b"block_hash"],
        fields[b"data"],
    )


# -- reading the destination ------------------------------------------------------------


def index_members(client: redis.Redis, table: str) -> dict[str, int]:
    """The block index: row key → block number (a range-keyed row's range end)."""
    return {
        key.decode(): int(score)
        for key, score in client.zrange(f"{table}:_index", 0, -1, withscores=True)
    }


def hash_rows(
    client: redis.Redis, table: str, block_field: bytes = b"_block_num"
) -> dict[str, Fields]:
    """Every row of a hash table, read through its index; checks the index is exact:
    one member per row, its score the row's ``block_field``, no key under ``table:``
    outside it."""
    index = index_members(client, table)
    pipe = client.pipeline(transaction=False)
    for key in index:
        pipe.hgetall(key)
    rows = dict(zip(index, pipe.execute(), strict=True))
    missing = [key for key, fields in rows.items() if not fields]
    assert not missing, f"{len(missing)} index members have no hash, e.g. {missing[:3]}"
    wrong = [k for k, f in rows.items() if int(f[block_field]) != index[k]]
    assert not wrong, f"index scores differ from the rows' {block_field.decode()}: {wrong[:3]}"
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


def assert_exact(
    client: redis.Redis,
    table: str,
    structure: str,
    chain: SimulatedChain,
    blocks: tuple[int, int] | None = None,
) -> None:
    """The destination holds exactly the canonical logs (of ``blocks`` when given):
    each once, nothing else."""
    stored = stored_rows(client, table, structure)
    ours = Counter(row_of(fields) for fields in stored.values())
    duplicates = {row[:2]: n for row, n in ours.items() if n > 1}
    assert not duplicates, f"{len(duplicates)} rows stored twice, e.g. {list(duplicates)[:3]}"
    expected = canonical_rows(chain, blocks)
    missing, extra = expected - ours, ours - expected
    assert not missing and not extra, (
        f"{len(stored)} rows stored, {sum(expected.values())} canonical; missing "
        f"{len(missing)} (e.g. blocks {sorted({r[0] for r in missing})[:5]}), extra "
        f"{len(extra)} (e.g. blocks {sorted({r[0] for r in extra})[:5]})"
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
