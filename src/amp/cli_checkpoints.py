"""``amp checkpoints list|reset``: see and reset a destination's delivery state.

Why a module of its own: the subcommand only parses, builds the destination's loader
from ``--to`` and prints; what it lists and deletes is ``amp.checkpoint_admin``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from amp.checkpoint_admin import CheckpointRow, checkpoint_rows, reset_stream, stream_states
from amp.cli_env import add_to_argument
from amp.connection import ConnectionSettings
from amp.destination_url import destination_from_url
from amp.errors import ConfigError
from amp.loaders.base import DataLoader
from amp.streaming.state import StateStore
from amp.streaming.state_sql import check_table_prefix

DEFAULT_CONNECTION = "cli"


def add_checkpoints(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    checkpoints = subparsers.add_parser(
        "checkpoints",
        help="list or reset the checkpoints a destination keeps",
        description="See the checkpoints that loads keep in a destination, or reset a "
        "table's stream so that its next load starts from the beginning.",
    )
    actions = checkpoints.add_subparsers(dest="action", required=True)
    listing = actions.add_parser(
        "list",
        help="one row per checkpoint",
        description="One row per checkpoint: connection, table, worker, network, last "
        "range, is_reorg, timestamp and age.",
    )
    _common(listing, table_required=False)
    listing.add_argument("--format", choices=("table", "json"), default="table")
    listing.add_argument(
        "--plans",
        action="store_true",
        help="also show parallel loads' stored plans (kind 'plan', no range)",
    )
    listing.set_defaults(run=_run_list)
    reset = actions.add_parser(
        "reset",
        help="delete a table's checkpoints, processed ranges and parallel plan",
        description="Delete the resume state of a table's stream (every worker's "
        "checkpoint, its processed ranges and its parallel plan; the checkpoint history "
        "is kept for audit), so its next load starts from the beginning. Without --yes, "
        "only print what would be deleted. Refused while a load holds the stream "
        "(PostgreSQL, Redis, DuckDB; Kafka cannot tell, see docs/operations.md).",
    )
    _common(reset, table_required=True)
    reset.add_argument("--yes", action="store_true", help="really delete")
    reset.set_defaults(run=_run_reset)


def _common(parser: argparse.ArgumentParser, table_required: bool) -> None:
    add_to_argument(parser)
    parser.add_argument("--table", required=table_required, default=None, help="destination table")
    parser.add_argument(
        "--connection",
        default=None,
        help="connection name (the load's --connection-name); default: every connection",
    )
    parser.add_argument(
        "--prefix",
        default="amp_",
        help="the state tables' prefix, the connection's checkpoint table_prefix (default: amp_)",
    )


@contextmanager
def _destination(
    url: str, connection: str, prefix: str
) -> Iterator[tuple[DataLoader[Any], StateStore]]:
    """A loader of ``connection`` at ``url``, connected, and its state store."""
    check_table_prefix("--prefix", prefix)
    loader_name, config = destination_from_url(url)
    settings = ConnectionSettings.parse(connection, loader_name, config)
    loader = settings.build(connection)
    state_store = getattr(loader, "state_store", None)
    if state_store is None:
        raise ConfigError(f"the {loader_name} loader keeps no checkpoints (no state_store())")
    try:
        loader.ensure_connected()
        yield loader, state_store(prefix)
    finally:
        loader.close()


def _run_list(args: argparse.Namespace) -> int:
    with _destination(args.to, args.connection or DEFAULT_CONNECTION, args.prefix) as (_, store):
        rows = checkpoint_rows(store, args.connection, args.table, plans=args.plans)
    now = datetime.now(UTC)
    if args.format == "json":
        print(json.dumps([row.to_json(now) for row in rows], indent=2))
    else:
        print(render_table(rows, now))
    return 0


def _run_reset(args: argparse.Namespace) -> int:
    connection = args.connection or DEFAULT_CONNECTION
    with _destination(args.to, connection, args.prefix) as (_, store):
        states = stream_states(store, args.table, args.connection)
    states = [state for state in states if not state.empty]
    if not states:
        print(f"nothing to reset: no checkpoints, processed ranges or plan of {args.table!r}")
        return 0
    if not args.yes:
        print("would delete:")
        for state in states:
            print(f"  {state.describe()}")
        print("nothing deleted; rerun with --yes to delete (the checkpoint history stays)")
        return 0
    for state in states:
        # A loader of the stream's own connection: its claims and Kafka producer ids are.
        with _destination(args.to, state.connection, args.prefix) as (loader, store):
            reset_stream(loader, store, state)
        print(f"deleted: {state.describe()}")
    return 0


# -- the table format --------------------------------------------------------------------

COLUMNS = ("connection", "table", "worker", "network", "range", "is_reorg", "timestamp", "age")


def render_table(rows: Sequence[CheckpointRow], now: datetime) -> str:
    """Aligned plain-text columns (never wrapped or cut, so scripts can read them)."""
    plans = any(row.kind != "checkpoint" for row in rows)
    header = ("kind", *COLUMNS) if plans else COLUMNS
    lines = [header] + [_cells(row, now, plans) for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    ]
    return "\n".join([*text, f"{len(rows)} checkpoint(s)"])


def _cells(row: CheckpointRow, now: datetime, with_kind: bool) -> tuple[str, ...]:
    if row.start is None:
        span = "-"
    else:
        span = f"{row.start}..{row.end}" + (f" ({short_hash(row.hash)})" if row.hash else "")
    age = row.age_seconds(now)
    cells = (
        row.connection,
        row.table,
        str(row.worker),
        row.network or "-",
        span,
        "true" if row.is_reorg else "false",
        "-" if row.timestamp is None else row.timestamp.isoformat(timespec="seconds"),
        "-" if age is None else human_age(age),
    )
    return (row.kind, *cells) if with_kind else cells


def short_hash(value: str) -> str:
    """``0x1234…abcd``: enough to tell two hashes apart by eye."""
    return value if len(value) <= 14 else f"{value[:6]}…{value[-4:]}"


def human_age(seconds: float) -> str:
    """``42s``, ``5m 02s``, ``3h 07m``, ``2d 04h``."""
    whole = max(0, int(seconds))
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"
