"""The server's side of a verification: the user's query, restricted to one block range.

Why a subquery: the user's query may have its own WHERE, joins, a CTE or a trailing
comment; ``SELECT ... FROM (<query>) AS amp_verify_source WHERE <block> BETWEEN a AND b``
restricts whatever it returns without editing its text. The query text goes in on its
own lines (a trailing ``--`` comment cannot swallow the closing parenthesis), after its
final ``;`` is dropped with sqlglot's tokenizer (``amp.sqltext``). A SETTINGS clause is
refused: verify runs batch queries, and a clause cannot sit inside a subquery.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pyarrow as pa

from amp import sqltext
from amp.errors import ConfigError

if TYPE_CHECKING:
    from amp.client import Client

_ALIAS = "amp_verify_source"


def quote(identifier: str) -> str:
    """A double-quoted SQL identifier (the Amp server's and PostgreSQL's, DuckDB's quoting)."""
    return '"' + identifier.replace('"', '""') + '"'


def _query_body(query: str) -> str:
    if sqltext.trailing_settings(query) is not None:
        raise ConfigError(
            "amp verify: remove the query's SETTINGS clause; verify compares with batch "
            "queries of the server, one block range at a time"
        )
    return sqltext.without_final_semicolon(query)


class ServerSide:
    """The rows the server's query returns, read one block range at a time."""

    def __init__(self, client: Client, query: str) -> None:
        self.client = client
        self.body = _query_body(query)

    def _sql(self, select: str, where: str = "") -> str:
        sql = f"SELECT {select} FROM (\n{self.body}\n) AS {_ALIAS}"
        return f"{sql} WHERE {where}" if where else sql

    def schema(self) -> pa.Schema:
        """The query's columns, from a run that returns no rows."""
        return self.client.sql(self._sql("*") + " LIMIT 0").to_arrow().schema

    def bounds(self, block_column: str) -> tuple[int, int] | None:
        """The lowest and highest block the query returns rows of (None: no rows)."""
        column = quote(block_column)
        table = self.client.sql(
            self._sql(f"min({column}) AS first_block, max({column}) AS last_block")
        ).to_arrow()
        first, last = table.column(0)[0].as_py(), table.column(1)[0].as_py()
        return None if first is None or last is None else (int(first), int(last))

    def batches(
        self, columns: list[str], block_column: str, first: int, last: int
    ) -> Iterator[pa.RecordBatch]:
        """The query's rows of blocks ``first..last``, projected on ``columns``."""
        select = ", ".join(quote(name) for name in columns)
        where = f"{quote(block_column)} BETWEEN {int(first)} AND {int(last)}"
        yield from self.client.sql(self._sql(select, where)).stream()
