"""Arrow types as Iceberg (format v2) stores them, without silent loss.

Why a mapping of our own before pyiceberg's: pyiceberg maps ``uint32`` to Iceberg ``int``
(32-bit signed: values from 2^31 up would not fit) and refuses nanosecond timestamps,
which every Amp query of block data returns. So each Arrow type is first mapped to one
Iceberg holds exactly, and every batch is cast with Arrow's *safe* cast, which raises
rather than overflow or truncate:

    Arrow                          Iceberg                 how
    int8/16/32/64, uint8/16        int / long              as is
    uint32                         long                    widened
    uint64                         long                    a value >= 2^63 is refused
    decimal128(p, s), p <= 38      decimal(p, s)           as is (decimal128(38,0) too)
    fixed_size_binary[n]           fixed[n]                as is
    binary / large_binary          binary                  as is
    string / large_string          string                  as is
    timestamp[s|ms|us], tz         timestamp(tz)           widened to us
    timestamp[ns], tz              timestamp(tz) in us     timestamp_ns='exact' (default):
                                                          a value with sub-microsecond
                                                          digits is refused; 'truncate':
                                                          those digits are dropped
    date32, bool, float, double    date, boolean, ...      as is

Iceberg v2 has no nanosecond timestamp (v3 adds one; pyiceberg 0.12 does not write it).
Reading back gives microsecond timestamps in UTC ('+00:00' and 'UTC' are the same zone).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from amp.errors import ConfigError, FatalLoadError


def iceberg_type(field: pa.Field) -> pa.DataType:
    """The Arrow type ``field`` is stored as (see the module table)."""
    kind = field.type
    if pa.types.is_uint32(kind) or pa.types.is_uint64(kind):
        return pa.int64()
    if pa.types.is_timestamp(kind):
        return pa.timestamp("us", tz=kind.tz)
    if pa.types.is_decimal(kind) and kind.precision > 38:
        raise ConfigError(
            f"column {field.name!r} is {kind}: Iceberg decimals hold at most 38 digits; "
            "cast it in the query (e.g. to a string)"
        )
    if pa.types.is_large_binary(kind) or pa.types.is_binary_view(kind):
        return pa.binary()
    if pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        return pa.string()
    if pa.types.is_time64(kind) and kind.unit == "ns":
        return pa.time64("us")
    return kind


def stored_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` with each column's type as stored (nullability and names kept)."""
    return pa.schema(
        [pa.field(f.name, iceberg_type(f), nullable=f.nullable) for f in schema],
        metadata=None,
    )


def to_stored(table: pa.Table, target: pa.Schema, timestamp_ns: str) -> pa.Table:
    """``table`` cast to ``target`` (the stored schema), never losing a value silently:
    FatalLoadError naming the column when a value does not fit."""
    columns = []
    for name in target.names:
        column = table.column(name)
        wanted = target.field(name).type
        columns.append(_cast(name, column, wanted, timestamp_ns))
    return pa.Table.from_arrays(columns, schema=target)


def _cast(name: str, column: pa.ChunkedArray, wanted: pa.DataType, mode: str) -> pa.ChunkedArray:
    if column.type == wanted:
        return column
    is_ns = pa.types.is_timestamp(column.type) and column.type.unit == "ns"
    if is_ns and mode == "truncate":
        return pc.cast(column, wanted, safe=False)
    try:
        return pc.cast(column, wanted, safe=True)
    except pa.ArrowInvalid as exc:
        if is_ns:
            raise FatalLoadError(
                f"FATAL: column {name!r} holds a nanosecond timestamp with sub-microsecond "
                "digits; Iceberg v2 stores microseconds and amp never drops digits silently. "
                "Set iceberg config 'timestamp_ns': 'truncate' to drop them, or cast the "
                f"column in the query ({exc})"
            ) from exc
        raise FatalLoadError(
            f"FATAL: column {name!r} has a value that does not fit Iceberg's {wanted} "
            f"(from {column.type}): {exc}. Cast it in the query (e.g. to a decimal or string)"
        ) from exc
