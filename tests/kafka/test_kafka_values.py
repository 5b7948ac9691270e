"""Kafka message values: a row's bytes depend on the row alone, never on the batch slice
the server happened to send it in (defect 15: timestamps rendered two ways)."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pytest

from amp.loaders.kafka import json_values

WHOLE = datetime(2024, 1, 1, 0, 0, 0, tzinfo=UTC)
FRACTIONAL = datetime(2024, 1, 1, 0, 0, 1, 500_000, tzinfo=UTC)


@pytest.mark.parametrize("unit", ["ms", "us", "ns"])
@pytest.mark.parametrize("tz", ["UTC", None])
def test_same_row_encodes_identically_in_every_slice(unit: str, tz: str | None) -> None:
    moments = [WHOLE, FRACTIONAL] if tz else [m.replace(tzinfo=None) for m in (WHOLE, FRACTIONAL)]
    batch = pa.record_batch(
        {"block_num": pa.array([1, 2], pa.int64()), "ts": pa.array(moments, pa.timestamp(unit, tz))}
    )
    together = json_values(batch)
    alone = json_values(batch.slice(0, 1)) + json_values(batch.slice(1, 1))
    assert together == alone
    zone = "Z" if tz else ""
    assert together[0] == f'{{"block_num":1,"ts":"2024-01-01T00:00:00{zone}"}}'.encode()
    fraction = {"ms": ".500", "us": ".500000", "ns": ".500000000"}[unit]
    assert together[1] == f'{{"block_num":2,"ts":"2024-01-01T00:00:01{fraction}{zone}"}}'.encode()


def test_second_unit_and_nulls() -> None:
    batch = pa.record_batch({"ts": pa.array([WHOLE.replace(tzinfo=None), None], pa.timestamp("s"))})
    assert json_values(batch) == [b'{"ts":"2024-01-01T00:00:00"}', b'{"ts":null}']
