"""``amp load --config FILE``: every ``[[load]]`` of the file at once, one thread each.

Why threads in one process: each load is its own loop with its own checkpoint (a
``CliLoad``, as ``amp load`` with flags runs it), and they share one metrics listener,
one ``/healthz`` and one progress display (a line per load). A load that fails does not
stop the others (each is its own stream; ``/healthz`` says 503 after a FATAL); the
process exits 0 only when every load succeeded. Ctrl-C: the first stops every load at a
microbatch boundary, a second ends the process at once (130).

Precedence: the file's ``server`` and ``auth_token`` first, then ``--server`` /
``$AMP_SERVER`` and ``--auth-token`` / ``$AMP_AUTH_TOKEN`` for loads whose file names
none; the process-wide flags (``--metrics-port``, ``--no-progress``, ``--log-format``...)
win over the file's keys of the same name.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from amp.cli_config import ConfigFile, read_config
from amp.cli_load_run import CliLoad, serve_metrics_for
from amp.cli_logging import configure_logging
from amp.cli_parallel import parallel_config
from amp.errors import ConfigError
from amp.interrupts import ctrl_c_stops, exit_at_once
from amp.monitoring import loads
from amp.progress import ProgressBoard
from amp.redact import redact_text

if TYPE_CHECKING:
    from amp.streaming.results import LoadResult

log = logging.getLogger("amp.cli")

# Process-wide flags a config file may set too: (argparse dest, its "not given" value).
PROCESS_FLAGS = {
    "metrics_port": None,
    "metrics_host": "127.0.0.1",
    "stall_seconds": None,
    "no_progress": False,
}


def _apply_settings(args: argparse.Namespace, config: ConfigFile) -> None:
    """The file's process-wide keys where the command line left the flag unset; the
    loads' servers and tokens where the file left them out."""
    settings = config.settings
    for dest, unset in PROCESS_FLAGS.items():
        if getattr(args, dest) == unset and dest in settings:
            setattr(args, dest, settings[dest])
    if (args.log_format is None and "log_format" in settings) or settings.get("verbose"):
        verbose = args.verbose or settings.get("verbose", False)
        log_format = args.log_format or settings.get("log_format") or "text"
        configure_logging(logging.DEBUG if verbose else logging.INFO, log_format)
    for load in config.loads:
        load.server = load.server or args.server
        load.auth_token = load.auth_token or args.auth_token
        load.no_progress = args.no_progress
        load.metrics_port = args.metrics_port
        if load.server is None:
            raise ConfigError(
                f"{args.config}: {load.label} has no server: add server = "
                '"grpc://host:1602" at the top of the file (or in the [[load]]), or give '
                "--server or $AMP_SERVER"
            )


def _prepare(path: str, load: argparse.Namespace) -> CliLoad:
    """The load configured (nothing connects yet); errors name its [[load]]."""
    try:
        return CliLoad(load, parallel_config(load), shown=False)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {load.label}: {exc}") from None


def _head_logger(cli_load: CliLoad) -> Callable[[LoadResult], bool]:
    """Logs the first commit of a streaming load at the chain head (what an operator, or
    a test, waits for); never ends the load."""
    table = cli_load.args.table
    reported = False

    def after(result: LoadResult) -> bool:
        nonlocal reported
        monitor = loads.monitor(table)
        if not reported and monitor is not None and monitor.caught_up:
            reported = True
            log.info(
                "%s: at the chain head, block %s committed; streaming new blocks",
                cli_load.args.label,
                monitor.committed_block,
            )
        return False

    return after


def run_config(args: argparse.Namespace) -> int:
    """Check the file, configure every load, then run them all; 0 when all succeeded."""
    config = read_config(args.config)
    _apply_settings(args, config)
    prepared: list[CliLoad] = []
    try:
        for load in config.loads:
            prepared.append(_prepare(args.config, load))
        with serve_metrics_for(args):
            return _run_all(prepared, args.no_progress)
    finally:
        for cli_load in prepared:
            cli_load.close()


def _run_all(prepared: list[CliLoad], no_progress: bool) -> int:
    errors: dict[int, str] = {}

    def work(index: int, cli_load: CliLoad) -> None:
        watch = _head_logger(cli_load) if cli_load.args.stream else None
        try:
            cli_load.consume(watch)
        except Exception as exc:  # one load's end; the others go on
            errors[index] = redact_text(str(exc))
            print(f"{cli_load.name}: error: {errors[index]}", file=sys.stderr, flush=True)

    threads = [
        threading.Thread(target=work, args=(i, p), name=f"amp-load-{i}", daemon=True)
        for i, p in enumerate(prepared)
    ]
    board = ProgressBoard(lambda: [p.renderable() for p in prepared], disabled=no_progress)
    runs = [cli_load.run for cli_load in prepared]
    with ctrl_c_stops(runs, at_once=lambda: exit_at_once("load", board.stop)), board:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    for index, cli_load in enumerate(prepared):
        label = cli_load.args.label
        for line in cli_load.summary():
            print(f"{label}: {line}")
        if index in errors:
            print(f"{label}: failed: {errors[index]}")
    failed = [p for i, p in enumerate(prepared) if i in errors or p.failed]
    return 1 if failed else 0
