"""Arrow batches converted for PostgreSQL binary COPY, and the column types declared
for them (used by ``amp.loaders.postgresql``)."""

from __future__ import annotations

import pgpq
import pyarrow as pa
import pyarrow.compute as pc

from amp.errors import ConfigError, DestinationError
from amp.loaders.columns import align

# pgpq's Postgres type (class name) → the column type we declare.
_PG_TYPES = {
    "Bool": "BOOLEAN",
    "Bytea": "BYTEA",
    "Int8": "BIGINT",
    "Int2": "SMALLINT",
    "Int4": "INTEGER",
    "Char": '"char"',
    "Text": "TEXT",
    "Jsonb": "JSONB",
    "Float4": "REAL",
    "Float8": "DOUBLE PRECISION",
    "Date": "DATE",
    "Time": "TIME",
    "Timestamp": "TIMESTAMP",
    "Interval": "INTERVAL",
    "Numeric": "NUMERIC",
}


def _is_text(data_type: pa.DataType) -> bool:
    return (
        pa.types.is_string(data_type)
        or pa.types.is_large_string(data_type)
        or pa.types.is_string_view(data_type)
    )


class _TableWriter:
    """Converts batches of one Arrow schema for COPY and knows the table's DDL."""

    def __init__(self, schema: pa.Schema, text_nul: str) -> None:
        self.source_schema = schema
        self.text_nul = text_nul
        fields = []
        for field in schema:
            data_type = field.type
            if pa.types.is_timestamp(data_type) and data_type.unit == "ns":
                data_type = pa.timestamp("us", tz=data_type.tz)
            elif _is_text(data_type):
                data_type = pa.binary() if text_nul == "bytea" else pa.string()
            elif pa.types.is_large_binary(data_type) or pa.types.is_binary_view(data_type):
                data_type = pa.binary()
            fields.append(pa.field(field.name, data_type, field.nullable))
        self.copy_schema = pa.schema(fields)
        try:
            self.encoder_schema = pgpq.ArrowToPostgresBinaryEncoder(self.copy_schema).schema()
        except Exception as exc:  # pgpq raises ValueError with the unsupported type
            raise ConfigError(f"cannot load this schema into PostgreSQL: {exc}") from exc

    def column_types(self) -> list[tuple[str, str]]:
        declared = []
        for field, column in zip(self.copy_schema, self.encoder_schema.columns, strict=True):
            data_type = field.type
            pg_name = type(column.data_type).__name__
            if pa.types.is_decimal(data_type):
                pg_type = f"NUMERIC({data_type.precision},{data_type.scale})"
            elif pa.types.is_uint64(data_type):
                pg_type = "NUMERIC(20,0)"
            elif pa.types.is_timestamp(data_type) and data_type.tz is not None:
                pg_type = "TIMESTAMPTZ"
            elif pg_name in _PG_TYPES:
                pg_type = _PG_TYPES[pg_name]
            else:
                raise ConfigError(
                    f"column {field.name!r} of Arrow type {data_type} has no PostgreSQL "
                    "column type in amp; cast it in the query (for example to a string)"
                )
            declared.append((field.name, pg_type))
        return declared

    def convert(self, batch: pa.RecordBatch, table: str) -> pa.RecordBatch:
        """The batch as COPY reads it: columns by name in the table's order (a changed
        set of columns is a FatalLoadError), text and binary types PostgreSQL takes."""
        batch = align(batch, self.source_schema, table)
        columns = []
        for index, (source, target) in enumerate(
            zip(self.source_schema, self.copy_schema, strict=True)
        ):
            column = batch.column(index)
            if _is_text(source.type) and self.text_nul != "bytea":
                column = self._text_column(column, source.name, table, batch)
            if column.type != target.type:
                try:
                    column = column.cast(target.type)
                except pa.ArrowInvalid as exc:
                    raise DestinationError(
                        f"column {source.name!r} of {table}: cannot convert {source.type} to "
                        f"{target.type} for PostgreSQL without losing data: {exc}"
                    ) from exc
            columns.append(column)
        return pa.RecordBatch.from_arrays(columns, schema=self.copy_schema)

    def _text_column(
        self, column: pa.Array, name: str, table: str, batch: pa.RecordBatch
    ) -> pa.Array:
        has_nul = pc.match_substring(column, "\x00")
        if not pc.any(has_nul).as_py():
            return column
        if self.text_nul == "strip":
            return pc.replace_substring(column, "\x00", "")
        row = pc.index(has_nul, True).as_py()
        where = ""
        for block_name in ("_block_num", "block_num"):
            if block_name in batch.schema.names:
                where = f" (block {batch.column(block_name)[row].as_py()})"
                break
        raise DestinationError(
            f"column {name!r} of {table} holds a NUL byte{where}, which PostgreSQL text "
            "cannot store; set the connection's 'text_nul' to 'bytea' (lossless: text "
            "columns become BYTEA) or 'strip' (removes NUL bytes), or cast the column in SQL"
        )
