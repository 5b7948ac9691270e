"""Arrow types through Delta and back (delta-rs reading): every value equal, with the
documented type changes (``amp.loaders.delta.types``): unsigned → wider signed (uint64 →
decimal(20, 0), a block column → long), timestamps in microseconds (UTC when zoned),
fixed-size binary → binary, decimal128(38, 0) unchanged; a value the Delta type cannot
hold is refused, never altered."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pytest
from delta_support import delta_config, read_table

from amp.devserver import DevServer
from amp.errors import DestinationError
from amp.loaders.base import LoadMode
from amp.loaders.delta.loader import DeltaLakeLoader
from amp.streaming.types import BlockRange
from kit import load_to_head, unique
from kit.chain import arrow_rows, assert_equals_canonical

BIG = Decimal("9" * 38)  # the largest decimal(38, 0)
MOMENT = datetime(2024, 5, 17, 12, 30, 45, 123456, tzinfo=UTC)

COLUMNS: dict[str, tuple[pa.Array, pa.DataType]] = {
    "_block_num": (pa.array([1, 2, 3], pa.uint64()), pa.int64()),
    "u8": (pa.array([0, 255, None], pa.uint8()), pa.int16()),
    "u16": (pa.array([0, 65535, 7], pa.uint16()), pa.int32()),
    "u32": (pa.array([0, 2**32 - 1, 7], pa.uint32()), pa.int64()),
    "u64": (pa.array([0, 2**64 - 1, None], pa.uint64()), pa.decimal128(20, 0)),
    "i8": (pa.array([-128, 127, 0], pa.int8()), pa.int8()),
    "i64": (pa.array([-(2**63), 2**63 - 1, 0], pa.int64()), pa.int64()),
    "f64": (pa.array([1.5, -0.0, None], pa.float64()), pa.float64()),
    "flag": (pa.array([True, False, None], pa.bool_()), pa.bool_()),
    "text": (pa.array(["a", "", "ünï"], pa.string()), pa.string()),
    "bytes": (pa.array([b"\x00\x01", b"", None], pa.binary()), pa.binary()),
    "hash": (pa.array([b"\xab" * 32, b"\x00" * 32, b"\xff" * 32], pa.binary(32)), pa.binary()),
    "amount": (
        pa.array([BIG, Decimal("-" + "9" * 38), Decimal(0)], pa.decimal128(38, 0)),
        pa.decimal128(38, 0),
    ),
    "at_ns": (pa.array([MOMENT, None, MOMENT], pa.timestamp("ns", tz="+00:00")), None),
    "at_s": (pa.array([MOMENT.replace(microsecond=0)] * 3, pa.timestamp("s", tz="UTC")), None),
    "local_us": (pa.array([MOMENT.replace(tzinfo=None)] * 3, pa.timestamp("us")), None),
    "day": (pa.array([19000, 0, None], pa.date32()), pa.date32()),
    "items": (pa.array([[1, 2], [], None], pa.list_(pa.int64())), None),
}


def _loader(tmp_path: Path, schema: pa.Schema) -> DeltaLakeLoader:
    loader = DeltaLakeLoader(delta_config(tmp_path), connection_name="types")
    loader.ensure_connected()
    loader.prepare_table("types", schema, LoadMode.APPEND, "_block_num")
    return loader


def _write(loader: DeltaLakeLoader, batch: pa.RecordBatch) -> None:
    loader.begin()
    loader.write("types", batch, BlockRange("mainnet", 1, 3))
    loader.commit()


def test_every_type_round_trips(tmp_path: Path) -> None:
    batch = pa.record_batch({name: array for name, (array, _) in COLUMNS.items()})
    loader = _loader(tmp_path, batch.schema)
    _write(loader, batch)
    back = read_table(tmp_path, "types")
    for name, (array, stored) in COLUMNS.items():
        column = back.column(name)
        if stored is not None:
            assert column.type == stored, (name, column.type)
        if pa.types.is_timestamp(array.type):
            assert column.type.unit == "us", (name, column.type)
            assert (column.type.tz is None) == (array.type.tz is None), (name, column.type)
        assert column.to_pylist() == array.to_pylist(), name


@pytest.mark.parametrize(
    ("name", "array", "words"),
    [
        ("_block_num", pa.array([2**63], pa.uint64()), r"above 2\*\*63-1"),
        ("nanos", pa.array([1_000_000_001], pa.timestamp("ns", tz="UTC")), "microseconds"),
    ],
)
def test_a_value_delta_cannot_hold_is_refused(
    tmp_path: Path, name: str, array: pa.Array, words: str
) -> None:
    columns = {"_block_num": pa.array([1], pa.uint64()), name: array}
    batch = pa.record_batch(columns)
    loader = _loader(tmp_path, batch.schema)
    with pytest.raises(DestinationError, match=words) as raised:
        _write(loader, batch)
    assert repr(name) in str(raised.value)
    loader.rollback()
    assert read_table(tmp_path, "types").num_rows == 0


@pytest.mark.parametrize("dataset", ["logs", "blocks", "transactions"])
def test_the_dev_servers_tables_round_trip_exactly(tmp_path: Path, dataset: str) -> None:
    """Every column of the server's tables (uint64, binary(32), decimal128(38, 0), ns
    timestamps) equals the canonical chain after a load."""
    with DevServer(port=0, seed=3, initial_blocks=40, max_interval=10) as server:
        query = f"SELECT * FROM eth_firehose.{dataset}"
        config = delta_config(tmp_path, checkpoint=True)
        load_to_head(server, unique("dt"), "deltalake", config, dataset, query=query)
        canonical = server.chain.canonical_table(dataset)
        columns = canonical.schema.names
        rows = arrow_rows(read_table(tmp_path, dataset), columns)
        assert_equals_canonical(
            rows, server.chain, dataset, columns, len(columns), f"Delta {dataset}"
        )
