"""Arrow types round-trip through an Iceberg table (read back with pyiceberg) without
silent loss: decimal128(38,0) at its extremes, fixed-size binaries with NUL bytes,
uint32 widened to long, timestamps (nanoseconds carried as microseconds when exact,
refused or truncated, as configured, when not), strings, booleans, dates, floats."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest
from iceberg_support import Lake

from amp.errors import FatalLoadError
from amp.loaders.base import LoadMode
from amp.loaders.iceberg.loader import IcebergLoader

BIGGEST = Decimal(10**38 - 1)
SMALLEST = Decimal(-(10**38 - 1))  # not -BIGGEST: unary minus rounds to 28 digits
SCHEMA = pa.schema(
    [
        pa.field("block", pa.uint64(), nullable=False),
        pa.field("amount", pa.decimal128(38, 0)),
        pa.field("hash", pa.binary(32)),
        pa.field("at", pa.timestamp("ns", tz="+00:00")),
        pa.field("local", pa.timestamp("us")),
        pa.field("index", pa.uint32()),
        pa.field("name", pa.large_string()),
        pa.field("payload", pa.large_binary()),
        pa.field("flag", pa.bool_()),
        pa.field("ratio", pa.float64()),
        pa.field("day", pa.date32()),
    ]
)
MOMENT = datetime(2024, 2, 29, 23, 59, 59, 999_999, tzinfo=UTC)
VALUES: dict[str, list[Any]] = {
    "block": [1, 2, 3],
    "amount": [BIGGEST, SMALLEST, None],
    "hash": [b"\x00" * 32, bytes(range(32)), None],
    "at": [MOMENT, datetime(1970, 1, 1, tzinfo=UTC), None],
    "local": [datetime(2000, 1, 1, 0, 0, 0, 1), None, datetime(1900, 1, 1)],
    "index": [4_294_967_295, 0, None],
    "name": ["ünïcødé", "", None],
    "payload": [b"\x00\x01\x00", b"", None],
    "flag": [True, False, None],
    "ratio": [1.5, -0.0, None],
    "day": [date(2024, 2, 29), date(1, 1, 1), None],
}


def load(lake: Lake, batch: pa.RecordBatch, **config: Any) -> pa.Table:
    """Write ``batch`` as one unit into a fresh table ``t``; the table read back."""
    loader = IcebergLoader(lake.config(**config), "types")
    try:
        loader.connect()
        loader.prepare_table("t", batch.schema, LoadMode.APPEND, "block")
        with loader.transaction():
            loader.write("t", batch)
    finally:
        loader.close()
    return lake.table("t").scan().to_arrow().sort_by("block")


def test_values_round_trip_exactly(lake: Lake) -> None:
    batch = pa.RecordBatch.from_pydict(VALUES, schema=SCHEMA)
    back = load(lake, batch)
    types = {field.name: field.type for field in back.schema}
    assert types["amount"] == pa.decimal128(38, 0)
    assert types["hash"] == pa.binary(32)
    assert types["index"] == pa.int64()
    assert types["at"] == pa.timestamp("us", tz="UTC")
    assert types["local"] == pa.timestamp("us")
    for name, expected in VALUES.items():
        got = back.column(name).to_pylist()
        if name == "at":  # an aware datetime compares by instant ('+00:00' is UTC)
            assert got == expected, name
        else:
            assert got == expected, f"{name}: {got} != {expected}"


def ns_batch(nanoseconds: int) -> pa.RecordBatch:
    stamps = pa.array([1_700_000_000_000_000_000 + nanoseconds], pa.timestamp("ns", tz="UTC"))
    return pa.RecordBatch.from_arrays([pa.array([7], pa.uint64()), stamps], ["block", "at"])


def test_nanosecond_timestamps_with_sub_microsecond_digits_are_refused(lake: Lake) -> None:
    with pytest.raises(FatalLoadError, match=r"'at'.*sub-microsecond.*'timestamp_ns': 'truncate'"):
        load(lake, ns_batch(1_234_567))


def test_nanosecond_timestamps_truncated_when_asked(lake: Lake) -> None:
    back = load(lake, ns_batch(1_234_567), timestamp_ns="truncate")
    stored = back.column("at").cast(pa.int64()).to_pylist()
    assert stored == [1_700_000_000_000_000 + 1_234]  # microseconds, the 567 ns dropped


def test_nanosecond_timestamps_on_microseconds_are_kept(lake: Lake) -> None:
    back = load(lake, ns_batch(1_234_000))
    assert back.column("at").cast(pa.int64()).to_pylist() == [1_700_000_000_000_000 + 1_234]


def test_uint64_beyond_long_is_refused(lake: Lake) -> None:
    batch = pa.RecordBatch.from_arrays(
        [pa.array([1], pa.uint64()), pa.array([2**63], pa.uint64())], ["block", "value"]
    )
    with pytest.raises(FatalLoadError, match=r"'value'.*does not fit"):
        load(lake, batch)
