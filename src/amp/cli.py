"""The ``amp`` command: one program, one subcommand per job.

Why thin: each subcommand parses its arguments and calls the public API, so what the
command line can do, a Python user can do the same way.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TYPE_CHECKING

from amp import cli_env
from amp.cli_checkpoints import add_checkpoints
from amp.cli_env import add_auth_token_argument, add_server_argument, add_to_argument
from amp.cli_load_run import CliLoad, consume, serve_metrics_for
from amp.cli_logging import FORMATS as LOG_FORMATS
from amp.cli_logging import configure_logging
from amp.cli_options import add_option_argument
from amp.cli_parallel import FIELDS as PARALLEL_FIELDS
from amp.cli_parallel import add_parallel_arguments, parallel_config
from amp.cli_query import add_query
from amp.cli_tables import add_tables_command
from amp.cli_verify import add_verify
from amp.errors import AmpError, ConfigError
from amp.interrupts import ctrl_c_stops, exit_at_once, interrupted_line
from amp.progress import LoadStats, ProgressDisplay
from amp.redact import redact_text
from amp.version import package_version

log = logging.getLogger("amp.cli")

PARALLEL_FLAGS = tuple(PARALLEL_FIELDS)

if TYPE_CHECKING:
    from amp.client import LoadRun
    from amp.streaming.results import LoadResult


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
    dev.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        help="wait before each data message, as a remote server's network would (benchmarks)",
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

    if args.latency_ms < 0:
        raise ConfigError(f"--latency-ms must be >= 0, got {args.latency_ms}")
    server.faults.set_latency(args.latency_ms / 1000)
    server.start()
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    print(f"Amp dev server listening on {server.url}", flush=True)
    server.wait()
    server.stop()
    print("Amp dev server stopped", flush=True)
    return 0


def _add_load(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    load = subparsers.add_parser(
        "load",
        help="load a query's results into a database",
        description="Run a query on an Amp server and load its rows into a table, once "
        "(batch) or continuously (--stream), with live progress, by one worker or split "
        "over several (--parallel). Ctrl-C stops at a microbatch boundary; a second "
        "Ctrl-C stops at once (exit 130).",
    )
    add_server_argument(load, required=False)
    load.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="a TOML file of loads ([[load]] tables) to run at once, each with its own "
        "progress line and checkpoint; replaces --query, --to, --table and the other "
        "per-load flags (README: amp load, config file)",
    )
    load.add_argument("--query", default=None, help="the SQL query (required without --config)")
    add_to_argument(load, required=False)
    load.add_argument("--table", default=None, help="destination table (required without --config)")
    load.add_argument("--stream", action="store_true", help="stream new blocks until stopped")
    load.add_argument(
        "--mode",
        choices=("append", "overwrite"),
        default=None,
        help="what to do with existing rows (default append)",
    )
    add_auth_token_argument(load)
    load.add_argument(
        "--checkpoint",
        action="store_true",
        help="save a checkpoint with every commit and resume from it on restart",
    )
    load.add_argument(
        "--idempotency",
        action="store_true",
        help="record processed ranges and skip any the server sends again (exactly once)",
    )
    load.add_argument(
        "--connection-name",
        default=None,
        help="name that keys this load's checkpoints and processed ranges (default: cli)",
    )
    load.add_argument("--no-progress", action="store_true", help="no live progress display")
    add_option_argument(load)
    load.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        default=None,
        help="serve Prometheus /metrics and /healthz on 127.0.0.1:PORT while loading "
        "(docs/operations.md)",
    )
    load.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address the metrics listener binds (default 127.0.0.1)",
    )
    load.add_argument(
        "--stall-seconds",
        type=float,
        metavar="S",
        default=None,
        help="/healthz answers 503 when a load behind the chain head has not committed "
        "for S seconds (default 300)",
    )
    add_parallel_arguments(load)
    load.set_defaults(run=_run_load)


def run_load_with_progress(
    load: LoadRun,
    display: ProgressDisplay,
    done: Callable[[LoadResult], bool] | None = None,
) -> LoadStats:
    """Consume a load, showing progress, until it ends or ``done(result)`` says so; the
    first Ctrl-C stops it at a microbatch boundary, a second one interrupts at once (the
    open transaction rolls back)."""
    with ctrl_c_stops(load):
        return consume(load, display, done)


# Flags that describe one load: with --config, the file's [[load]] tables say these.
_PER_LOAD_FLAGS: tuple[str, ...] = ("query", "to", "table", "stream", "mode", "checkpoint")
_PER_LOAD_FLAGS += ("idempotency", "connection_name", "options", *PARALLEL_FLAGS)
_REQUIRED_FLAGS = ("server", "query", "to", "table")


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _given(args: argparse.Namespace, dest: str) -> bool:
    value = getattr(args, dest)
    if dest == "to" and value is not None and value == cli_env.from_env(cli_env.TO):
        return False  # $AMP_TO, not the flag
    return value not in (None, False, [])


def _run_load(args: argparse.Namespace) -> int:
    if args.config is not None:
        given = [_flag(dest) for dest in _PER_LOAD_FLAGS if _given(args, dest)]
        if given:
            raise ConfigError(
                f"--config names the loads; {', '.join(given)} cannot be given with it "
                "(write them as keys of the file's [[load]] tables; see README, amp load)"
            )
        from amp.cli_config_run import run_config

        return run_config(args)
    missing = [_flag(dest) for dest in _REQUIRED_FLAGS if getattr(args, dest) is None]
    if missing:
        raise ConfigError(
            f"the following arguments are required: {', '.join(missing)} (or --config FILE)"
        )
    args.mode = args.mode or "append"
    args.connection_name = args.connection_name or "cli"
    parallel = parallel_config(args)
    with serve_metrics_for(args):
        cli_load = CliLoad(args, parallel)
        # Parallel workers are threads: a second Ctrl-C ends the process (amp.interrupts).
        at_once = None
        if parallel is not None:
            at_once = lambda: exit_at_once(args.command, cli_load.stop_display)  # noqa: E731
        try:
            with ctrl_c_stops(cli_load.run, at_once=at_once):
                cli_load.consume()
        finally:
            cli_load.close()
    for line in cli_load.summary():
        print(line)
    return 1 if cli_load.failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="amp", description=__doc__)
    parser.add_argument("--version", action="version", version=f"amp {package_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=None,
        help="text for people, json for log shippers: one object per line on stderr "
        f"(default: ${cli_env.LOG_FORMAT}, else text)",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_dev(subparsers)
    _add_load(subparsers)
    add_query(subparsers)
    add_tables_command(subparsers)
    add_checkpoints(subparsers)
    add_verify(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    log_format = args.log_format or cli_env.from_env(cli_env.LOG_FORMAT) or "text"
    if log_format not in LOG_FORMATS:
        parser.error(f"${cli_env.LOG_FORMAT} must be text or json, got {log_format!r}")
    configure_logging(logging.DEBUG if args.verbose else logging.INFO, log_format)
    try:
        return int(args.run(args))
    except (AmpError, ValueError, OSError) as exc:
        print(f"amp {args.command}: error: {redact_text(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # A second Ctrl-C (or one before the load started): one line, the shell's code.
        print(interrupted_line(args.command), file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
