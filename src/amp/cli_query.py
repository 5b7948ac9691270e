"""``amp query``: run a batch query and print its result, for people or for programs.

Formats:

- ``table`` (default): a rich table for reading on a terminal; wide values may be cut
  to fit the screen.
- ``csv``: a header line, then one line per row; whole values (``amp.arrowtext``):
  binary as ``0x`` hex, decimals exact, timestamps ISO-8601, lists and structs as JSON
  text, booleans ``true``/``false``, null as an empty field.
- ``json``: JSON Lines, one object per row (column → value), written as rows arrive;
  null is ``null``, decimals are strings (exact), binary ``0x`` hex, NaN/Infinity strings.

Why batch by batch: a result larger than memory still prints; csv and json hold one
record batch at a time (the table format holds its rows, to size the columns).
``--output FILE`` writes FILE.partial and renames it when the query has finished, so a
failed query never leaves a file that looks whole.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Protocol

import pyarrow as pa

from amp.arrowtext import column_values
from amp.cli_env import add_auth_token_argument, add_server_argument
from amp.errors import ConfigError
from amp.streaming.reader import batch_events

FORMATS = ("table", "csv", "json")


class RowWriter(Protocol):
    def write(self, batch: pa.RecordBatch) -> None: ...

    def finish(self, rows: int) -> None: ...


def _rows(batch: pa.RecordBatch) -> list[tuple[Any, ...]]:
    return list(zip(*(column_values(column) for column in batch.columns), strict=True))


class CsvWriter:
    def __init__(self, out: IO[str], names: list[str]) -> None:
        self.csv = csv.writer(out, lineterminator="\n")
        self.csv.writerow(names)

    def write(self, batch: pa.RecordBatch) -> None:
        self.csv.writerows([_csv_field(value) for value in row] for row in _rows(batch))

    def finish(self, rows: int) -> None:
        pass


def _csv_field(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False)
    return value


class JsonLinesWriter:
    def __init__(self, out: IO[str], names: list[str]) -> None:
        repeated = sorted(name for name, count in Counter(names).items() if count > 1)
        if repeated:
            raise ConfigError(
                f"--format json needs distinct column names; {', '.join(repeated)} appear "
                "more than once: give them aliases (SELECT a.x AS a_x, b.x AS b_x ...)"
            )
        self.out = out
        self.names = names

    def write(self, batch: pa.RecordBatch) -> None:
        for row in _rows(batch):
            record = dict(zip(self.names, row, strict=True))
            self.out.write(json.dumps(record, ensure_ascii=False) + "\n")

    def finish(self, rows: int) -> None:
        pass


class TableWriter:
    def __init__(self, out: IO[str], names: list[str]) -> None:
        from rich.console import Console
        from rich.table import Table

        self.console = Console(file=out)
        self.table = Table(*names)

    def write(self, batch: pa.RecordBatch) -> None:
        for row in _rows(batch):
            self.table.add_row(*("NULL" if value is None else _text(value) for value in row))

    def finish(self, rows: int) -> None:
        self.console.print(self.table)
        self.console.print(f"{rows:,} rows")


def _text(value: Any) -> str:
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


WRITERS: dict[str, Callable[[IO[str], list[str]], RowWriter]] = {
    "table": TableWriter,
    "csv": CsvWriter,
    "json": JsonLinesWriter,
}


def add_query(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    query = subparsers.add_parser(
        "query",
        help="run a batch query and print the result (table, csv or json)",
        description="Run a batch query on an Amp server and print its rows: as a table "
        "(default), or with whole values as CSV or JSON Lines (one object per row), to "
        "stdout or --output FILE.",
    )
    add_server_argument(query)
    query.add_argument("sql", help="the SQL query")
    add_auth_token_argument(query)
    query.add_argument("--format", choices=FORMATS, default="table", help="default: table")
    query.add_argument(
        "--output", metavar="FILE", default=None, help="write to FILE instead of stdout"
    )
    query.set_defaults(run=run_query)


@contextmanager
def _destination(path: str | None) -> Any:
    """stdout, or FILE.partial renamed to FILE when the block ends without an error."""
    if path is None:
        yield sys.stdout
        sys.stdout.flush()
        return
    final = Path(path)
    partial = final.with_name(final.name + ".partial")
    try:
        with partial.open("w", encoding="utf-8", newline="") as out:
            yield out
        os.replace(partial, final)
    finally:
        partial.unlink(missing_ok=True)


def run_query(args: argparse.Namespace) -> int:
    from amp.client import Client

    client = Client(args.server, auth_token=args.auth_token)
    rows = 0
    try:
        stream = client.transport.execute(args.sql, streaming=False)
        try:
            names = list(stream.schema.names)
            with _destination(args.output) as out:
                writer = WRITERS[args.format](out, names)
                for event in batch_events(stream):
                    writer.write(event.batch)
                    rows += event.batch.num_rows
                writer.finish(rows)
        finally:
            stream.close()
    finally:
        client.close()
    if args.output is not None:
        print(f"wrote {rows:,} rows to {args.output}", file=sys.stderr)
    return 0
