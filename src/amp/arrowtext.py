"""Arrow columns as whole, exact values for text output (``amp query --format csv|json``).

Why not ``to_pylist()`` as it is: bytes are not text, a Decimal printed by ``str`` may
turn into ``1E+3``, and a nanosecond timestamp cannot become a Python datetime without
losing digits. Here every value becomes one JSON-ready value that keeps all of it:
binary as ``0x`` hex, decimals as exact strings, timestamps as ISO-8601 (every digit the
column's unit has), NaN and infinities as the strings ``"NaN"``, ``"Infinity"`` and
``"-Infinity"``, lists and structs as lists and objects of such values, null as None.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

_EPOCH = datetime(1970, 1, 1)
_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
_DIGITS = {"s": 0, "ms": 3, "us": 6, "ns": 9}
# The integer type of a temporal column's counts, by its bit width.
_COUNT_TYPES = {32: pa.int32(), 64: pa.int64()}


def column_values(array: pa.Array | pa.ChunkedArray) -> list[Any]:
    """The values of ``array``, each JSON-ready and whole (see the module's docstring)."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    kind = array.type
    if pa.types.is_dictionary(kind):
        return column_values(array.dictionary_decode())
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return _lists(array)
    if pa.types.is_struct(kind):
        return _structs(array)
    if pa.types.is_map(kind):  # as a list of {"key": k, "value": v}
        entry = pa.struct([kind.key_field, kind.item_field])
        return _lists(array.cast(pa.list_(pa.field("entries", entry, nullable=False))))
    convert = _scalar_converter(kind)
    if convert is None:
        return array.to_pylist()
    counts = isinstance(convert, _Counts)
    values = (array.cast(_COUNT_TYPES[kind.bit_width]) if counts else array).to_pylist()
    return [None if value is None else convert(value) for value in values]


def _scalar_converter(kind: pa.DataType) -> Callable[[Any], Any] | None:
    """How one Python value of a column of ``kind`` becomes whole text; None: as it is."""
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return _hex
    if pa.types.is_fixed_size_binary(kind):
        return _hex
    if pa.types.is_decimal(kind):
        return _decimal
    if pa.types.is_floating(kind):
        return _float
    if pa.types.is_timestamp(kind):
        return _timestamp_text(kind.unit, kind.tz is not None)
    if pa.types.is_duration(kind):
        return _duration_text(kind.unit)
    if pa.types.is_time(kind):
        return _time_text(kind.unit)
    if pa.types.is_date(kind):
        return _date
    return None


def _hex(value: bytes) -> str:
    return "0x" + value.hex()


def _decimal(value: Any) -> str:
    return format(value, "f")  # every digit of its scale, never an exponent


def _float(value: float) -> Any:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def _date(value: Any) -> str:
    return str(value.isoformat())


def _fraction(remainder: int, unit: str) -> str:
    return f".{remainder:0{_DIGITS[unit]}d}" if remainder else ""


def _timestamp_text(unit: str, zoned: bool) -> Callable[[Any], Any]:
    """An int64 count of ``unit`` since the epoch as ISO-8601. A zoned column stores
    UTC instants, printed as UTC with ``+00:00``; a naive one without an offset."""
    per_second = _PER_SECOND[unit]

    def text(count: int) -> str:
        seconds, remainder = divmod(count, per_second)
        moment = _EPOCH + timedelta(seconds=seconds)
        whole = moment.replace(tzinfo=UTC) if zoned else moment
        head = whole.isoformat()
        if zoned:  # the fraction goes before the offset
            return head[:-6] + _fraction(remainder, unit) + head[-6:]
        return head + _fraction(remainder, unit)

    return _Counts(text)


def _duration_text(unit: str) -> Callable[[Any], Any]:
    """An int64 count of ``unit`` as an ISO-8601 duration in seconds, ``PT1.5S``."""
    per_second = _PER_SECOND[unit]

    def text(count: int) -> str:
        sign = "-" if count < 0 else ""
        seconds, remainder = divmod(abs(count), per_second)
        return f"{sign}PT{seconds}{_fraction(remainder, unit)}S"

    return _Counts(text)


def _time_text(unit: str) -> Callable[[Any], Any]:
    """An int count of ``unit`` since midnight as ``HH:MM:SS[.fff]``."""
    per_second = _PER_SECOND[unit]

    def text(count: int) -> str:
        seconds, remainder = divmod(count, per_second)
        hours, rest = divmod(seconds, 3600)
        return f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}{_fraction(remainder, unit)}"

    return _Counts(text)


class _Counts:
    """A converter of a temporal column read as its integer counts of its unit (a
    Python datetime would lose nanoseconds)."""

    def __init__(self, text: Callable[[int], str]) -> None:
        self.text = text

    def __call__(self, value: int) -> str:
        return self.text(value)


def _lists(array: pa.Array) -> list[Any]:
    lengths = pc.list_value_length(array).to_pylist()
    flat = column_values(array.flatten())
    values: list[Any] = []
    position = 0
    for length in lengths:
        if length is None:
            values.append(None)
            continue
        values.append(flat[position : position + length])
        position += length
    return values


def _structs(array: pa.StructArray) -> list[Any]:
    names = [array.type.field(index).name for index in range(array.type.num_fields)]
    columns = [column_values(child) for child in array.flatten()]
    valid = array.is_valid().to_pylist()
    return (
        [
            dict(zip(names, row, strict=True)) if ok else None
            for ok, row in zip(valid, zip(*columns, strict=True), strict=True)
        ]
        if columns
        else [({} if ok else None) for ok in valid]
    )
