"""``amp verify``: does a destination table hold exactly what the server's query returns?

Exit 0 when it does, 1 when rows are missing, duplicated or extra (the report names the
block ranges), 2 when the comparison could not be made (``amp.cli.main``'s errors).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from amp.cli_env import add_auth_token_argument, add_server_argument, add_to_argument
from amp.verify.compare import DEFAULT_RANGE_ROWS

if TYPE_CHECKING:
    from amp.verify import VerifyReport


def _block(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"a block number is >= 0, got {value}")
    return value


def add_verify(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    command = subparsers.add_parser(
        "verify",
        help="compare a destination table with the server's query",
        description="Compare a table amp loaded with what the server returns for the "
        "query now, block range by block range (row counts and checksums, then the rows "
        "of the ranges that differ). Reports rows missing from the table, rows it holds "
        "more than once, and rows the server does not return (e.g. of a forked block). "
        "Exit 0 when equal, 1 when not, 2 on errors.",
    )
    add_server_argument(command)
    command.add_argument("--query", required=True, help="the query the table was loaded from")
    add_to_argument(command, "destination: postgresql://user@host:port/db or duckdb:///file.db")
    command.add_argument("--table", required=True, help="destination table ([schema.]name)")
    command.add_argument(
        "--from-block", type=_block, default=None, help="first block compared (default: lowest)"
    )
    command.add_argument(
        "--to-block", type=_block, default=None, help="last block compared (default: highest)"
    )
    command.add_argument("--format", choices=("table", "json"), default="table")
    command.add_argument(
        "--range-rows",
        type=int,
        default=DEFAULT_RANGE_ROWS,
        help=f"rows compared per range, in memory at once (default {DEFAULT_RANGE_ROWS:,})",
    )
    add_auth_token_argument(command)
    command.set_defaults(run=run_verify)


def _print_table(report: VerifyReport) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if report.first_block is None:
        console.print(f"{report.table}: no rows on either side")
    else:
        console.print(
            f"{report.table}, blocks {report.first_block}..{report.last_block}: "
            f"{report.server_rows:,} rows on the server, {report.destination_rows:,} in the "
            f"destination; compared {', '.join(report.columns)}"
        )
    if report.skipped_columns:
        console.print(f"not compared: {', '.join(report.skipped_columns)}")
    if report.ranges:
        table = Table("blocks", "server rows", "table rows", "missing", "duplicate", "extra")
        for span in report.ranges:
            table.add_row(
                f"{span.first_block}..{span.last_block}",
                *(
                    f"{count:,}"
                    for count in (
                        span.server_rows,
                        span.destination_rows,
                        span.missing_rows,
                        span.duplicate_rows,
                        span.extra_rows,
                    )
                ),
            )
        console.print(table)
    verdict = "equal" if report.equal else "NOT equal"
    console.print(
        f"{verdict}: {report.missing_rows:,} missing, {report.duplicate_rows:,} duplicate, "
        f"{report.extra_rows:,} extra rows in {len(report.ranges):,} range(s)"
    )


def run_verify(args: argparse.Namespace) -> int:
    from amp.verify import verify

    report = verify(
        args.server,
        args.query,
        args.to,
        args.table,
        from_block=args.from_block,
        to_block=args.to_block,
        range_rows=args.range_rows,
        auth_token=args.auth_token,
    )
    if args.format == "json":
        json.dump(report.as_dict(), sys.stdout)
        sys.stdout.write("\n")
    else:
        _print_table(report)
    return 0 if report.equal else 1
