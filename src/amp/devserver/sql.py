"""SQL for the dev server: plan with DataFusion, reject what cannot stream, run on a range.

Why plan on empty tables: the output schema (for FlightInfo), the tables a query reads
and whether it is incremental are all properties of the logical plan, so a query is
validated at GetFlightInfo, as the real server does, before any block is generated.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa
from datafusion import LogicalPlan, SessionConfig, SessionContext
from datafusion.catalog import Schema

from amp.devserver import settings_clause
from amp.devserver.datagen import TABLE_SCHEMAS

# Logical plan nodes a streaming (incremental) query may not contain, with the words a
# user reads in the error.
_NON_INCREMENTAL = {
    "Aggregate": "an aggregate (GROUP BY or an aggregate function)",
    "Distinct": "DISTINCT",
    "DistinctOn": "DISTINCT ON",
    "Limit": "LIMIT",
    "Sort": "ORDER BY",
    "Window": "a window function",
    "WindowExpr": "a window function",
    "WindowAggr": "a window function",  # the Window node's name in a plan's display
}

# One node per line of ``LogicalPlan.display_indent()``: its name and first argument. Unlike
# ``inputs()``, the display includes subqueries inside expressions (scalar, IN, EXISTS).
_DISPLAY_NODE = re.compile(r"^[ \t]*(\w+):[ \t]*(\S*)", re.MULTILINE)


_ROW_LOCAL = {"Projection", "Filter", "SubqueryAlias", "TableScan"}


class QueryError(Exception):
    """A query the server refuses: ``status`` is the gRPC status code name."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class PlannedQuery:
    """A validated query: its SQL without SETTINGS, mode, output schema and inputs."""

    sql: str
    streaming: bool
    schema: pa.Schema
    tables: tuple[str, ...]
    row_local: bool = False  # each output row depends on one input row: chunks are exact


def _walk(plan: LogicalPlan) -> list[LogicalPlan]:
    nodes = [plan]
    for child in plan.inputs():
        nodes.extend(_walk(child))
    return nodes


def _variant_name(plan: LogicalPlan) -> str:
    return type(plan.to_variant()).__name__


class QueryEngine:
    """Plans and runs SQL over one dataset's tables (``<dataset>.<table>``)."""

    def __init__(self, dataset: str, rows_per_message: int) -> None:
        self.dataset = dataset
        self.rows_per_message = rows_per_message

    def _context(self, tables: Callable[[str], pa.Table] | None) -> SessionContext:
        context = SessionContext(SessionConfig().with_batch_size(self.rows_per_message))
        context.catalog().register_schema(self.dataset, Schema.memory_schema())
        for name, schema in TABLE_SCHEMAS.items():
            data = tables(name) if tables is not None else schema.empty_table()
            batches = data.to_batches() or [pa.RecordBatch.from_pylist([], schema=schema)]
            context.register_record_batches(f"{self.dataset}.{name}", [batches])
        return context

    def plan(self, sql: str, force_streaming: bool | None = None) -> PlannedQuery:
        """Validate ``sql``; QueryError with the status the real server would send."""
        body, settings = settings_clause.split_settings(sql)
        streaming = (
            settings_clause.requests_streaming(settings)
            if force_streaming is None
            else force_streaming
        )
        if settings_clause.split_settings(body)[1]:
            raise QueryError(
                "INVALID_ARGUMENT",
                "invalid SQL query | Caused by: more than one SETTINGS clause; a query takes "
                "at most one, at its end",
            )
        if not body.strip().rstrip(";").strip():
            raise QueryError("INVALID_ARGUMENT", "invalid SQL query | Caused by: empty SQL text")
        try:
            frame = self._context(None).sql(body)
            plan = frame.logical_plan()
            optimized = frame.optimized_logical_plan()
            schema = frame.schema()
        except Exception as exc:  # DataFusion raises plain exceptions: message is all we have
            raise _planning_error(exc, self.dataset) from exc
        displayed = _DISPLAY_NODE.findall(plan.display_indent())
        violation = next(
            (
                _NON_INCREMENTAL[name]
                for name in [*map(_variant_name, _walk(plan)), *(name for name, _ in displayed)]
                if name in _NON_INCREMENTAL
            ),
            None,
        )
        if streaming and violation is not None:
            raise QueryError(
                "INVALID_ARGUMENT",
                "streaming query is not incremental | Caused by: the query uses "
                f"{violation}, which cannot be computed block range by block range; "
                "run it as a batch query (without SETTINGS stream = true) or remove it",
            )
        tables = tuple(
            sorted(
                {
                    str(node.to_variant().table_name()).rsplit(".", 1)[-1]
                    for node in _walk(optimized)
                    if _variant_name(node) == "TableScan"
                }
                | {
                    table.rsplit(".", 1)[-1]
                    for name, table in displayed
                    if name == "TableScan" and table.rsplit(".", 1)[-1] in TABLE_SCHEMAS
                }
            )
        )
        # Only projections and filters over one table scan: the result of a range is the
        # union of the results of its pieces, so a batch can run piece by piece.
        row_local = len(displayed) > 0 and all(name in _ROW_LOCAL for name, _ in displayed)
        row_local = row_local and sum(name == "TableScan" for name, _ in displayed) == 1
        return PlannedQuery(body, streaming, schema, tables, row_local)

    def execute(
        self, query: PlannedQuery, tables: Callable[[str], pa.Table]
    ) -> list[pa.RecordBatch]:
        """Run ``query`` over the given table contents; batches of the planned schema."""
        needed = set(query.tables)

        def table_data(name: str) -> pa.Table:
            return tables(name) if name in needed else TABLE_SCHEMAS[name].empty_table()

        batches = self._context(table_data).sql(query.sql).collect()
        result = []
        for batch in batches:
            if batch.num_rows == 0:
                continue
            if batch.schema != query.schema:
                batch = pa.RecordBatch.from_arrays(batch.columns, schema=query.schema)
            result.append(batch)
        return result


def _planning_error(exc: Exception, dataset: str) -> QueryError:
    text = str(exc)
    if "not found" in text and "table" in text.lower():
        tables = ", ".join(f"{dataset}.{name}" for name in sorted(TABLE_SCHEMAS))
        return QueryError(
            "NOT_FOUND", f"table not found | Caused by: {text} -> tables are: {tables}"
        )
    return QueryError("INVALID_ARGUMENT", f"invalid SQL query | Caused by: {text}")
