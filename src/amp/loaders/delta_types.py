"""Arrow columns as Delta Lake stores them, changed only where Delta has no such type.

Delta's types are a subset of Arrow's, so a few columns change on the way in, never
silently losing a value:

=========================  ===========================  ================================
Arrow                      Delta (read back as)         why / what is refused
=========================  ===========================  ================================
uint8 / uint16 / uint32    short / integer / long       Delta integers are signed: the
                           (int16 / int32 / int64)      next wider one holds every value
uint64                     long (int64)                 values above 2**63-1 are refused
timestamp[ns|ms|s], tz     timestamp (us, UTC)          Delta keeps microseconds; a value
                                                        with sub-microsecond digits is
                                                        refused rather than truncated
timestamp without tz       timestamp_ntz (us)           same
fixed_size_binary[n]       binary                       Delta has no fixed-size binary
decimal128(p, s)           decimal(p, s)                unchanged, up to (38, s)
=========================  ===========================  ================================
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from amp.errors import DestinationError

_WIDER = {
    pa.uint8(): pa.int16(),
    pa.uint16(): pa.int32(),
    pa.uint32(): pa.int64(),
    pa.uint64(): pa.int64(),
}
_INT64_MAX = 2**63 - 1


def delta_type(arrow: pa.DataType) -> pa.DataType:
    """The type a column of ``arrow`` is stored with (see the module table)."""
    if arrow in _WIDER:
        return _WIDER[arrow]
    if pa.types.is_timestamp(arrow):
        return pa.timestamp("us", tz="UTC" if arrow.tz is not None else None)
    if pa.types.is_fixed_size_binary(arrow):
        return pa.binary()
    return arrow


def delta_schema(schema: pa.Schema) -> pa.Schema:
    return pa.schema([field.with_type(delta_type(field.type)) for field in schema])


def to_delta(batch: pa.RecordBatch | pa.Table) -> pa.Table:
    """``batch`` with every column in its Delta type; DestinationError naming the
    column for a value the Delta type cannot hold."""
    table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
    target = delta_schema(table.schema)
    if target.equals(table.schema):
        return table
    columns = []
    for field, column in zip(table.schema, table.columns, strict=True):
        wanted = target.field(field.name).type
        if wanted == field.type:
            columns.append(column)
            continue
        if field.type == pa.uint64() and len(column):
            top = pc.max(column).as_py()
            if top is not None and top > _INT64_MAX:
                raise DestinationError(
                    f"column {field.name!r} holds {top}, above 2**63-1: a Delta long cannot "
                    "hold it (Delta has no unsigned 64-bit type); cast it to a decimal in "
                    "the query (CAST(... AS DECIMAL(20, 0)))"
                )
        try:
            columns.append(pc.cast(column, wanted, safe=True))
        except pa.ArrowInvalid as exc:
            raise DestinationError(
                f"column {field.name!r} ({field.type}) cannot be stored as Delta's {wanted} "
                f"without losing digits: {exc}; Delta keeps timestamps in microseconds, so "
                "truncate it in the query if that is acceptable"
            ) from exc
    return pa.Table.from_arrays(columns, schema=target)
