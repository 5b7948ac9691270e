"""``amp tables``: the tables of an Amp server's datasets, with each column's Arrow type.

Why it names the datasets (``--dataset``, default ``eth_firehose``) instead of asking the
server for a catalog: a real Amp server has none to give over Arrow Flight. It serves
only ``CommandStatementQuery`` (Flight SQL's ``CommandGetTables`` and the other catalog
commands answer INVALID_ARGUMENT ``unsupported flight descriptor command``), and it
plans each query over a catalog made of the tables that query names, so
``information_schema`` is not there either. What it does answer, for any table, is the
exact output schema of ``SELECT * FROM <dataset>.<table>`` at ``GetFlightInfo``: planned,
never run (see "What amp assumes of the server" in docs/architecture.md).
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa

from amp.cli_env import add_auth_token_argument, add_server_argument
from amp.errors import ServerError
from amp.flight.transport import FlightTransport
from amp.redact import redact_url

# The tables of Amp's EVM datasets (protocol §6) and of the dev server.
DEFAULT_DATASET = "eth_firehose"
DEFAULT_TABLES = ("blocks", "transactions", "logs")

_PLAIN_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")


@dataclass(frozen=True)
class Column:
    name: str
    arrow_type: str
    nullable: bool


@dataclass(frozen=True)
class TableListing:
    dataset: str
    table: str
    columns: tuple[Column, ...]

    @property
    def qualified_name(self) -> str:
        return f"{self.dataset}.{self.table}"


def quote_identifier(name: str) -> str:
    """``name`` as SQL: bare when plain lower-case, else double-quoted (``"ns/name"``)."""
    if _PLAIN_IDENTIFIER.match(name):
        return name
    return '"' + name.replace('"', '""') + '"'


def columns_of(schema: pa.Schema) -> tuple[Column, ...]:
    return tuple(Column(field.name, str(field.type), field.nullable) for field in schema)


def list_tables(
    transport: FlightTransport, datasets: Sequence[str], tables: Sequence[str]
) -> list[TableListing]:
    """Each ``dataset.table``'s columns, as the server plans ``SELECT *`` of it."""
    listings = []
    for dataset in datasets:
        for table in tables:
            sql = f"SELECT * FROM {quote_identifier(dataset)}.{quote_identifier(table)}"
            schema = transport.schema(sql)
            listings.append(TableListing(dataset, table, columns_of(schema)))
    return listings


def as_json(server: str, listings: Sequence[TableListing]) -> str:
    document = {
        "server": redact_url(server),
        "tables": [
            {
                "dataset": listing.dataset,
                "table": listing.table,
                "name": listing.qualified_name,
                "columns": [
                    {"name": c.name, "type": c.arrow_type, "nullable": c.nullable}
                    for c in listing.columns
                ],
            }
            for listing in listings
        ],
    }
    return json.dumps(document, indent=2)


def as_text(listings: Sequence[TableListing]) -> str:
    blocks = []
    for listing in listings:
        name_width = max([len("column"), *(len(c.name) for c in listing.columns)])
        type_width = max([len("type"), *(len(c.arrow_type) for c in listing.columns)])
        lines = [
            f"{listing.qualified_name} ({len(listing.columns)} columns)",
            f"  {'column':<{name_width}}  {'type':<{type_width}}  nullable",
        ]
        for c in listing.columns:
            nullable = "yes" if c.nullable else "no"
            lines.append(f"  {c.name:<{name_width}}  {c.arrow_type:<{type_width}}  {nullable}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def add_tables_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tables = subparsers.add_parser(
        "tables",
        help="list a server's tables and their columns (name, Arrow type, nullable)",
        description="Show the columns of each <dataset>.<table> as the server plans "
        "SELECT * of it (no data is read). An Amp server does not list its datasets over "
        "Flight, so name them with --dataset (and --table for tables other than the EVM "
        "datasets' blocks, transactions and logs).",
    )
    add_server_argument(tables)
    add_auth_token_argument(tables)
    tables.add_argument(
        "--dataset",
        action="append",
        default=None,
        help=f"dataset to describe, repeatable (default: {DEFAULT_DATASET})",
    )
    tables.add_argument(
        "--table",
        action="append",
        default=None,
        help=f"table of each dataset, repeatable (default: {', '.join(DEFAULT_TABLES)})",
    )
    tables.add_argument("--format", choices=("table", "json"), default="table")
    tables.set_defaults(run=run_tables)


def run_tables(args: argparse.Namespace) -> int:
    datasets = args.dataset or [DEFAULT_DATASET]
    tables = args.table or list(DEFAULT_TABLES)
    transport = FlightTransport(args.server, auth_token=args.auth_token)
    try:
        listings = list_tables(transport, datasets, tables)
    except ServerError as exc:
        if exc.status in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
            raise ServerError(
                f"{exc}; pass the server's token with --auth-token TOKEN or set AMP_AUTH_TOKEN",
                exc.status,
            ) from exc
        raise
    finally:
        transport.close()
    print(as_json(args.server, listings) if args.format == "json" else as_text(listings))
    return 0
