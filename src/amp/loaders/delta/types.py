"""Arrow columns as Delta Lake stores them, changed only where Delta has no such type.

Delta's types are a subset of Arrow's, so a few columns change on the way in, never
silently losing a value:

=========================  ===========================  ================================
Arrow                      Delta (read back as)         why / what is refused
=========================  ===========================  ================================
uint8 / uint16 / uint32    short / integer / long       Delta integers are signed: the
                           (int16 / int32 / int64)      next wider one holds every value
uint64                     decimal(20, 0)               every value kept; the load's block
                                                        columns (block numbers) are long
                                                        (int64), and a value above
                                                        2**63-1 there is refused
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
    pa.uint64(): pa.decimal128(20, 0),
}
_INT64_MAX = 2**63 - 1


def delta_type(arrow: pa.DataType, block_number: bool = False) -> pa.DataType:
    """The type a column of ``arrow`` is stored with (see the module table);
    ``block_number``: a block column, whose uint64 is a long (predicates, statistics)."""
    if block_number and arrow == pa.uint64():
        return pa.int64()
    if arrow in _WIDER:
        return _WIDER[arrow]
    if pa.types.is_timestamp(arrow):
        return pa.timestamp("us", tz="UTC" if arrow.tz is not None else None)
    if pa.types.is_fixed_size_binary(arrow):
        return pa.binary()
    return arrow


def delta_schema(schema: pa.Schema, block_columns: frozenset[str] = frozenset()) -> pa.Schema:
    return pa.schema(
        [field.with_type(delta_type(field.type, field.name in block_columns)) for field in schema]
    )


def to_delta(batch: pa.RecordBatch | pa.Table, target: pa.Schema) -> pa.Table:
    """``batch`` with every column in the table's type (``target``, made by
    ``delta_schema``); DestinationError naming the column for a value it cannot hold."""
    table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
    columns = []
    for field, column in zip(table.schema, table.columns, strict=True):
        index = target.get_field_index(field.name)
        if index < 0:
            raise DestinationError(
                f"the rows have a column {field.name!r} the Delta table has not; load with "
                "mode='overwrite' or into another table"
            )
        wanted = target.field(index).type
        if wanted == field.type:
            columns.append(column)
            continue
        if field.type == pa.uint64() and wanted == pa.int64() and len(column):
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
    names = table.schema.names
    return pa.Table.from_arrays(columns, schema=pa.schema([target.field(n) for n in names]))
