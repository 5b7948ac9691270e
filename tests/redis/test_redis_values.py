"""How column values are stored: binaries (fixed-size, with NUL bytes, empty) as their raw
bytes, integers and Decimal128 as decimal text, timestamps as ISO 8601 text, and a null
as a missing hash field. Checked for every column of streamed blocks and logs, then for
hand-made batches written through the loader's own begin/write/commit.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest
import redis
from redis_support import Fields, Names, hash_rows, redis_config, stored_rows

from amp.devserver import DevServer
from amp.loaders import LoadMode
from amp.loaders.redis import RedisLoader
from amp.streaming.types import BlockRange
from kit import connect_redis, load_to_head

STRUCTURES = ("hash", "stream")
# Rows keyed by these columns, per table.
KEYS = {"blocks": ("block_num",), "logs": ("block_num", "log_index")}


def assert_encoded(stored: Fields, row: dict[str, Any], schema: pa.Schema) -> None:
    """One stored row against its Arrow row, column by column."""
    present = {name.encode() for name, value in row.items() if value is not None}
    assert set(stored) == present, f"fields {sorted(set(stored) ^ present)} differ"
    for field in schema:
        value, kind = row[field.name], field.type
        if value is None:
            continue
        text = stored[field.name.encode()]
        if pa.types.is_binary(kind) or pa.types.is_fixed_size_binary(kind):
            assert text == value, f"{field.name}: {text!r} is not the raw bytes {value!r}"
        elif pa.types.is_integer(kind):
            assert text == str(value).encode(), f"{field.name}: {text!r} != {value}"
        elif pa.types.is_decimal(kind):
            assert text.decode().lstrip("-").isdigit(), f"{field.name}: {text!r}"
            assert Decimal(text.decode()) == value, f"{field.name}: {text!r} != {value}"
        elif pa.types.is_timestamp(kind):
            assert dt.datetime.fromisoformat(text.decode()) == value, f"{field.name}: {text!r}"
        else:
            raise AssertionError(f"no expectation for {field.name}: {kind}")


@pytest.mark.parametrize("name", list(KEYS))
@pytest.mark.parametrize("structure", STRUCTURES)
def test_streamed_values_are_stored_as_documented(
    structure: str, name: str, redis_client: redis.Redis, names: Names
) -> None:
    # From block 100: the genesis block has its own test (test_redis_streaming).
    with DevServer(port=0, seed=1, start_block=100, initial_blocks=40, max_interval=10) as srv:
        query = f"SELECT * FROM eth_firehose.{name}"
        config = redis_config(structure)
        load_to_head(srv, names.connection, "redis", config, names.table, query=query)
        canonical = srv.chain.canonical_table(name)
    rows = canonical.to_pylist()
    # The data must hold the awkward values, or this test proves nothing.
    values = [v for row in rows for v in row.values()]
    assert any(v is None for v in values), "no nulls"
    assert any(v == b"" for v in values), "no empty binaries"
    assert any(isinstance(v, bytes) and b"\x00" in v for v in values), "no NUL bytes"
    if name == "blocks":
        assert any(isinstance(v, int) and v >= 2**63 for v in values), "no uint64 > int64"
    stored = {
        tuple(int(fields[key.encode()]) for key in KEYS[name]): fields
        for fields in stored_rows(redis_client, names.table, structure).values()
    }
    assert len(stored) == len(rows)
    for row in rows:
        assert_encoded(stored[tuple(row[key] for key in KEYS[name])], row, canonical.schema)


def write_directly(names: Names, batch: pa.RecordBatch) -> list[Fields]:
    """``batch`` (rows of block 5) through the loader's own transaction; the stored rows
    in batch order."""
    loader = RedisLoader(redis_config(), names.connection)
    loader.connect()
    try:
        loader.prepare_table(names.table, batch.schema, LoadMode.APPEND, "_block_num")
        loader.begin()
        loader.write(names.table, batch, BlockRange("mainnet", 5, 5, hash="0x" + "ab" * 32))
        loader.commit()
    finally:
        loader.close()
    client = connect_redis()
    try:
        rows = hash_rows(client, names.table)
    finally:
        client.close()
    return [rows[key] for key in sorted(rows, key=lambda key: int(key.rsplit(":", 1)[1]))]


def blocks(rows: int) -> pa.Array:
    return pa.array([5] * rows, pa.uint64())


def test_binary_decimal_uint64_and_null_values(names: Names) -> None:
    top, low = Decimal(10**38 - 1), Decimal(-(10**37) - 7)
    batch = pa.record_batch(
        {
            "_block_num": blocks(3),
            "hash": pa.array([b"\x00" * 4, b"\x00ab\x00", b"\xff" * 4], pa.binary(4)),
            "data": pa.array([b"", b"\x00\x01\x00", None], pa.binary()),
            "amount": pa.array([top, low, None], pa.decimal128(38, 0)),
            "fraction": pa.array([Decimal("0.5"), Decimal("-12.25"), None], pa.decimal128(10, 2)),
            "big": pa.array([2**64 - 1, 0, None], pa.uint64()),
            "text": pa.array(["a\x00b", "", None], pa.utf8()),
        }
    )
    stored = write_directly(names, batch)
    assert stored[0] == {
        b"_block_num": b"5",
        b"hash": b"\x00" * 4,
        b"data": b"",
        b"amount": str(top).encode(),
        b"fraction": b"0.50",
        b"big": b"18446744073709551615",
        b"text": b"a\x00b",
    }
    assert stored[1] == {
        b"_block_num": b"5",
        b"hash": b"\x00ab\x00",
        b"data": b"\x00\x01\x00",
        b"amount": str(low).encode(),
        b"fraction": b"-12.25",
        b"big": b"0",
        b"text": b"",
    }
    assert stored[2] == {b"_block_num": b"5", b"hash": b"\xff" * 4}, "nulls must be omitted"


def test_boolean_column_is_stored(names: Names) -> None:
    """A query may select a boolean (``status = 1 AS ok``): redis-py refuses Python bools."""
    batch = pa.record_batch({"_block_num": blocks(2), "ok": pa.array([True, False])})
    stored = write_directly(names, batch)
    assert stored[0][b"ok"] in (b"1", b"true", b"True")
    assert stored[1][b"ok"] in (b"0", b"false", b"False")


def test_nanosecond_timestamp_is_stored_exactly(names: Names) -> None:
    """Amp timestamps are nanoseconds; one that is not a whole microsecond must load."""
    nanos = 1_600_000_000_123_456_789
    batch = pa.record_batch(
        {"_block_num": blocks(1), "at": pa.array([nanos], pa.timestamp("ns", tz="+00:00"))}
    )
    text = write_directly(names, batch)[0][b"at"].decode()
    assert text == str(nanos) or "40.123456789" in text, f"{text!r} lost the nanoseconds"


def test_date_is_stored_as_iso_text(names: Names) -> None:
    """Like timestamps (ISO 8601), not as a JSON string literal with quotes."""
    batch = pa.record_batch(
        {"_block_num": blocks(1), "day": pa.array([dt.date(2020, 9, 13)], pa.date32())}
    )
    assert write_directly(names, batch)[0][b"day"] == b"2020-09-13"
