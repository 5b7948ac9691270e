"""Rows are written by column name, and only with the columns their table was made for.

Why: the columns of a query's result may come in another order on a reconnect, or in
another order in DoGet than in the FlightInfo schema the table was prepared from. A
loader that wrote by position would put values into the wrong columns (or fail a cast
far from the cause). Every loader's ``write`` passes each batch through ``align``: the
same columns in another order are put back in the prepared order (cheap: no copy); an
added, removed or retyped column stops the load with a FATAL naming it, because rows
of another shape cannot go into the table without losing or inventing values. There
is no schema evolution rule: a changed query is loaded by starting the load again
(a new table, or ``mode='overwrite'``).
"""

from __future__ import annotations

import pyarrow as pa

from amp.errors import FatalLoadError


def schema_changes(prepared: pa.Schema, incoming: pa.Schema) -> list[str]:
    """How ``incoming`` differs from ``prepared`` by name and type (order aside), in
    words; empty when the columns are the same."""
    expected = {field.name: field.type for field in prepared}
    found = {field.name: field.type for field in incoming}
    changes = []
    if len(found) != len(incoming):
        duplicated = sorted({n for n in incoming.names if incoming.names.count(n) > 1})
        changes.append(f"duplicated column(s) {', '.join(duplicated)}")
    added = [f"{name} ({found[name]})" for name in found if name not in expected]
    removed = [name for name in expected if name not in found]
    retyped = [
        f"{name} ({expected[name]} -> {found[name]})"
        for name in expected
        if name in found and not found[name].equals(expected[name])
    ]
    for label, names in (("added", added), ("removed", removed), ("retyped", retyped)):
        if names:
            changes.append(f"{label} {', '.join(names)}")
    return changes


def align(batch: pa.RecordBatch, prepared: pa.Schema, table: str) -> pa.RecordBatch:
    """``batch`` with ``prepared``'s columns in ``prepared``'s order; FatalLoadError
    naming every added, removed or retyped column when they are not the same columns."""
    if batch.schema.names == prepared.names and all(
        field.type.equals(expected.type)
        for field, expected in zip(batch.schema, prepared, strict=True)
    ):
        return batch
    changes = schema_changes(prepared, batch.schema)
    if changes:
        raise FatalLoadError(
            f"FATAL: the columns of the query's rows changed while loading {table}: "
            f"{'; '.join(changes)}. Stopping client to prevent data loss: these rows do "
            "not fit the table's columns. Load the new columns into a new table, or "
            "with mode='overwrite'."
        )
    return batch.select(prepared.names)
