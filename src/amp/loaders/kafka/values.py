"""Kafka message values: a row as JSON (built column by column with Arrow compute) or as
a one-row Arrow IPC stream, and a ``key_column`` value as message key text."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from datetime import date, datetime, timedelta
from datetime import time as dt_time
from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"
_HEX_PAIRS = np.frombuffer(
    b"".join(f"{i:02x}".encode() for i in range(256)), dtype=np.uint8
).reshape(256, 2)


def _jsonable(value: Any) -> Any:
    """A Python value (from ``to_pylist``) in the JSON form the messages use."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, bytes | bytearray | memoryview):
        return "0x" + bytes(value).hex()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date | dt_time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        # map columns come back as lists of (key, value) pairs
        return [_jsonable(v) for v in value]
    return str(value)


def _key_text(value: Any) -> str:
    """A ``key_column`` value as the message key (text, binaries as ``0x…``)."""
    converted = _jsonable(value)
    return converted if isinstance(converted, str) else json.dumps(converted)


def _fixed_hex_fragments(array: pa.FixedSizeBinaryArray) -> pa.Array:
    """``_hex_fragments`` for fixed-width binaries (hashes, addresses): one 2-D fill."""
    width = array.type.byte_width
    rows = len(array)
    data = np.frombuffer(array.buffers()[1], dtype=np.uint8)[
        array.offset * width : (array.offset + rows) * width
    ]
    out = np.empty((rows, 2 * width + 4), dtype=np.uint8)
    out[:, :3] = np.frombuffer(b'"0x', dtype=np.uint8)
    out[:, 3:-1] = _HEX_PAIRS[data].reshape(rows, 2 * width)
    out[:, -1] = ord('"')
    offsets = np.arange(rows + 1, dtype=np.int64) * (2 * width + 4)
    strings = pa.LargeStringArray.from_buffers(
        rows, pa.py_buffer(offsets), pa.py_buffer(out.reshape(-1))
    )
    if array.null_count == 0:
        return strings
    return pc.if_else(array.is_valid(), strings, pa.scalar(None, pa.large_string()))


def _hex_fragments(array: pa.Array) -> pa.Array:
    """Binary values as JSON strings ``"0x…"``, vectorised (nulls stay null)."""
    if pa.types.is_fixed_size_binary(array.type):
        return _fixed_hex_fragments(array)
    offset_type = np.int64 if pa.types.is_large_binary(array.type) else np.int32
    buffers = array.buffers()
    offsets = np.frombuffer(buffers[1], dtype=offset_type)[
        array.offset : array.offset + len(array) + 1
    ].astype(np.int64)
    data = (
        np.frombuffer(buffers[2], dtype=np.uint8)
        if buffers[2] is not None
        else np.empty(0, np.uint8)
    )
    hexed = _HEX_PAIRS[data[offsets[0] : offsets[-1]]].reshape(-1)
    lengths = np.diff(offsets) * 2 + 4
    out_offsets = np.zeros(len(array) + 1, dtype=np.int64)
    np.cumsum(lengths, out=out_offsets[1:])
    out = np.empty(int(out_offsets[-1]), dtype=np.uint8)
    starts, ends = out_offsets[:-1], out_offsets[1:] - 1
    body = np.ones(len(out), dtype=bool)
    for shift, char in ((0, b'"'), (1, b"0"), (2, b"x")):
        body[starts + shift] = False
        out[starts + shift] = char[0]
    body[ends] = False
    out[ends] = ord('"')
    out[body] = hexed
    strings = pa.LargeStringArray.from_buffers(
        len(array), pa.py_buffer(out_offsets), pa.py_buffer(out)
    )
    return pc.if_else(array.is_valid(), strings, pa.scalar(None, pa.large_string()))


def _quoted(text: pa.Array, after: str = '"') -> pa.Array:
    """``"text"`` (``after`` closes it), null where ``text`` is null."""
    return pc.binary_join_element_wise(
        pa.scalar('"', pa.large_string()),
        text.cast(pa.large_string()),
        pa.scalar(after, pa.large_string()),
        pa.scalar("", pa.large_string()),
    )


def _timestamp_fragments(array: pa.Array) -> pa.Array:
    """ISO-8601 in quotes: UTC with ``Z`` when the column has a time zone; a whole second
    has no fraction, any other value the column unit's digits. Decided per value, so a
    row encodes to the same bytes whichever batch slice it arrives in."""
    unit_type: pa.TimestampType = array.type
    aware = unit_type.tz is not None
    if aware:
        array = array.cast(pa.timestamp(unit_type.unit, tz="UTC"))
    text = pc.strftime(array, format="%Y-%m-%dT%H:%M:%S")
    if unit_type.unit != "s":
        text = pc.replace_substring_regex(text, pattern=r"\.0+$", replacement="")
    return _quoted(text, 'Z"' if aware else '"')


def _python_fragments(array: pa.Array, dumps: Callable[[Any], str]) -> pa.Array:
    return pa.array(
        [None if v is None else dumps(v) for v in array.to_pylist()], type=pa.large_string()
    )


def _dumps_any(value: Any) -> str:
    return json.dumps(_jsonable(value), ensure_ascii=False, separators=(",", ":"))


def _json_fragments(array: pa.Array) -> pa.Array:
    """Each value of ``array`` as JSON text (null where the value is null)."""
    kind = array.type
    if pa.types.is_null(kind):
        return pa.nulls(len(array), pa.large_string())
    if pa.types.is_boolean(kind):
        return pc.if_else(
            array, pa.scalar("true", pa.large_string()), pa.scalar("false", pa.large_string())
        )
    if pa.types.is_integer(kind):
        return array.cast(pa.large_string())
    if pa.types.is_decimal(kind):
        return _quoted(array)
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return _hex_fragments(array)
    if pa.types.is_fixed_size_binary(kind):
        return _hex_fragments(array)
    if pa.types.is_timestamp(kind):
        return _timestamp_fragments(array)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return _python_fragments(array, lambda v: json.dumps(v, ensure_ascii=False))
    return _python_fragments(array, _dumps_any)


def json_values(batch: pa.RecordBatch) -> list[bytes]:
    """The rows of ``batch`` as JSON objects (UTF-8), built column by column."""
    if batch.num_rows == 0:
        return []
    pieces: list[Any] = []
    for index, name in enumerate(batch.schema.names):
        fragment = _json_fragments(batch.column(index)).fill_null("null")
        label = ("{" if index == 0 else ",") + json.dumps(name, ensure_ascii=False) + ":"
        pieces.append(pa.scalar(label, pa.large_string()))
        pieces.append(fragment.cast(pa.large_string()))
    if not pieces:
        return [b"{}"] * batch.num_rows
    pieces.append(pa.scalar("}", pa.large_string()))
    joined = pc.binary_join_element_wise(*pieces, pa.scalar("", pa.large_string()))
    return joined.cast(pa.large_binary()).to_pylist()


def arrow_values(batch: pa.RecordBatch) -> list[bytes]:
    """Each row of ``batch`` as its own Arrow IPC stream (schema, one-row batch, end)."""
    has_dictionary = any(pa.types.is_dictionary(f.type) for f in batch.schema)
    if has_dictionary:
        values = []
        for row in range(batch.num_rows):
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, batch.schema) as writer:
                writer.write_batch(batch.slice(row, 1))
            values.append(sink.getvalue().to_pybytes())
        return values
    schema = batch.schema.serialize().to_pybytes()
    return [
        schema + batch.slice(row, 1).serialize().to_pybytes() + _EOS
        for row in range(batch.num_rows)
    ]
