"""The ``amp`` command: one program, one subcommand per job.

Why thin: each subcommand parses its arguments and calls the public API, so what the
command line can do, a Python user can do the same way.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import urllib.parse
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

from amp.errors import AmpError, ConfigError
from amp.progress import STDERR, HeadTracker, LoadStats, ProgressDisplay, head_query_for

if TYPE_CHECKING:
    from amp.client import LoadRun
    from amp.streaming.pipeline import LoadResult


def _add_dev(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dev = subparsers.add_parser(
        "dev",
        help="run a local Amp-compatible server over a simulated chain",
        description="Serve a simulated EVM chain over Arrow Flight SQL, like a real Amp "
        "server, until SIGINT or SIGTERM.",
    )
    dev.add_argument("--host", default="127.0.0.1", help="address to listen on")
    dev.add_argument("--port", type=int, default=1602, help="port (0 picks a free one)")
    dev.add_argument("--seed", type=int, default=1, help="seed of the simulated chain")
    dev.add_argument("--network", default="mainnet")
    dev.add_argument("--dataset", default="eth_firehose")
    dev.add_argument("--start-block", type=int, default=0, help="number of the first block")
    dev.add_argument("--initial-blocks", type=int, default=100, help="blocks present at start")
    dev.add_argument(
        "--block-time",
        type=float,
        default=None,
        help="seconds between new blocks (none: no new blocks)",
    )
    dev.add_argument("--reorg-every", type=int, default=None, help="reorg every N new blocks")
    dev.add_argument("--reorg-depth", type=int, default=1, help="blocks replaced by each reorg")
    dev.add_argument("--max-interval", type=int, default=1000, help="most blocks per microbatch")
    dev.add_argument(
        "--txs-per-block", type=int, default=10, help="mean transactions per block (logs ~1.5x)"
    )
    dev.add_argument(
        "--auth-token", default=None, help="require 'authorization: Bearer TOKEN' on every call"
    )
    dev.set_defaults(run=_run_dev)


def _tune_malloc_for_serving() -> None:
    """Keep glibc from returning each microbatch's large temporaries to the kernel and
    faulting them in again (about a fifth of the dev server's CPU); glibc only."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(-3, 64 * 1024 * 1024)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 512 * 1024 * 1024)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        return


def _run_dev(args: argparse.Namespace) -> int:
    from amp.devserver import DevServer

    _tune_malloc_for_serving()
    server = DevServer(
        port=args.port,
        seed=args.seed,
        network=args.network,
        dataset=args.dataset,
        start_block=args.start_block,
        initial_blocks=args.initial_blocks,
        block_time=args.block_time,
        max_interval=args.max_interval,
        auth_token=args.auth_token,
        host=args.host,
        reorg_every=args.reorg_every,
        reorg_depth=args.reorg_depth,
        mean_txs_per_block=args.txs_per_block,
    )

    def request_stop(signum: int, frame: FrameType | None) -> None:
        server.request_stop()

    server.start()
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    print(f"Amp dev server listening on {server.url}", flush=True)
    server.wait()
    server.stop()
    print("Amp dev server stopped", flush=True)
    return 0


def destination_from_url(url: str) -> tuple[str, dict[str, Any]]:
    """A destination URL → (loader, config): ``postgresql://user:pass@host:port/db``,
    ``duckdb:///path.db``, ``redis://host:port/db`` or ``kafka://host:port/topic``."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme in ("postgresql", "postgres"):
        return "postgresql", {"dsn": url}
    if parsed.scheme == "duckdb":
        path = url[len("duckdb://") :]
        path = path[1:] if path.startswith("/") and path[1:] == ":memory:" else path
        if path.startswith("//"):
            path = path[1:]
        return "duckdb", {"database": path or ":memory:"}
    if parsed.scheme in ("redis", "rediss"):
        return "redis", {"url": url}
    if parsed.scheme == "kafka":
        config: dict[str, Any] = {"bootstrap_servers": parsed.netloc}
        if parsed.path.strip("/"):
            config["topic"] = parsed.path.strip("/")
        return "kafka", config
    raise ConfigError(
        f"unsupported destination URL {redact_url(url)!r}; use postgresql://user@host:port/db, "
        "duckdb:///path/to/file.db, redis://host:port/db or kafka://host:port/topic"
    )


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***``."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.password is None:
        return url
    netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parsed._replace(netloc=netloc))


def _add_load(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    load = subparsers.add_parser(
        "load",
        help="load a query's results into a database",
        description="Run a query on an Amp server and load its rows into a table, once "
        "(batch) or continuously (--stream), with live progress. Ctrl-C stops at a "
        "microbatch boundary.",
    )
    load.add_argument("--server", required=True, help="Amp server URL, e.g. grpc://localhost:1602")
    load.add_argument("--query", required=True, help="the SQL query")
    load.add_argument(
        "--to",
        required=True,
        help="destination: postgresql://user@host:port/db or duckdb:///file.db",
    )
    load.add_argument("--table", required=True, help="destination table")
    load.add_argument("--stream", action="store_true", help="stream new blocks until stopped")
    load.add_argument(
        "--mode",
        choices=("append", "overwrite"),
        default="append",
        help="what to do with existing rows",
    )
    load.add_argument("--auth-token", default=None, help="bearer token (default: $AMP_AUTH_TOKEN)")
    load.add_argument(
        "--checkpoint",
        action="store_true",
        help="save a checkpoint with every microbatch and resume from it on restart",
    )
    load.add_argument(
        "--idempotency",
        action="store_true",
        help="record processed ranges and skip any the server sends again (exactly once)",
    )
    load.add_argument(
        "--connection-name",
        default="cli",
        help="name that keys this load's checkpoints and processed ranges (default: cli)",
    )
    load.add_argument("--no-progress", action="store_true", help="no live progress line")
    load.set_defaults(run=_run_load)


def run_load_with_progress(
    load: LoadRun,
    display: ProgressDisplay,
    done: Callable[[LoadResult], bool] | None = None,
) -> LoadStats:
    """Consume a load, showing progress, until it ends or ``done(result)`` says so; the
    first Ctrl-C stops it at a microbatch boundary, a second one interrupts at once (the
    open transaction rolls back)."""
    interrupted = False

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        nonlocal interrupted
        if interrupted:
            raise KeyboardInterrupt
        interrupted = True
        load.stop()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        with display:
            for result in load:
                display.update(result)
                if not result.success or (done is not None and done(result)):
                    break
    finally:
        signal.signal(signal.SIGINT, previous)
        load.close()
    return display.stats


def _run_load(args: argparse.Namespace) -> int:
    from amp.client import Client

    loader, config = destination_from_url(args.to)
    if args.checkpoint:
        config["checkpoint"] = {"enabled": True}
    if args.idempotency:
        config["idempotency"] = {"enabled": True}
    client = Client(args.server, auth_token=args.auth_token)
    name = args.connection_name
    try:
        client.configure_connection(name, loader, config)
        load = client.sql(args.query).load(name, args.table, stream=args.stream, mode=args.mode)
        head_sql = head_query_for(args.query)
        tracker = HeadTracker(client.transport, head_sql) if head_sql and args.stream else None
        display = ProgressDisplay(args.table, tracker, disabled=args.no_progress)
        stats = run_load_with_progress(load, display)
    finally:
        client.close()
    print(
        f"loaded {stats.rows:,} rows into {args.table} ({stats.microbatches} microbatches, "
        f"{stats.reorgs} reorgs handled)"
    )
    return 0 if stats.failures == 0 else 1


def _add_query(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    query = subparsers.add_parser("query", help="run a batch query and print the result as a table")
    query.add_argument("--server", required=True, help="Amp server URL")
    query.add_argument("sql", help="the SQL query")
    query.add_argument("--auth-token", default=None, help="bearer token (default: $AMP_AUTH_TOKEN)")
    query.set_defaults(run=_run_query)


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return str(value)


def _run_query(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from amp.client import Client

    client = Client(args.server, auth_token=args.auth_token)
    try:
        result = client.sql(args.sql).to_arrow()
    finally:
        client.close()
    table = Table(*result.column_names)
    for row in result.to_pylist():
        table.add_row(*(_cell(value) for value in row.values()))
    console = Console()
    console.print(table)
    console.print(f"{result.num_rows:,} rows")
    return 0


def configure_logging(level: int) -> None:
    """On a terminal, log through rich on the progress line's console, so records print
    above it; elsewhere (files, pipes, CI), one plain line per record."""
    handler: logging.Handler
    if STDERR.is_terminal:
        from rich.logging import RichHandler

        handler = RichHandler(console=STDERR, show_path=False, rich_tracebacks=False)
        fmt = "%(name)s: %(message)s"
    else:
        handler = logging.StreamHandler(sys.stderr)
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level, format=fmt, handlers=[handler], force=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="amp", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_dev(subparsers)
    _add_load(subparsers)
    _add_query(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return int(args.run(args))
    except (AmpError, ValueError, OSError) as exc:
        print(f"amp {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
