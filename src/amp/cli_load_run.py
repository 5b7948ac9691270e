"""One ``amp load`` as the command line runs it: client, LoadRun, progress and summary.

Why one class for the flags and the config file: ``amp load --query ...`` runs one of
these in the main thread, ``amp load --config`` runs one per ``[[load]]`` in threads;
both build the destination, the options, the parallel plan, the head tracker and the
summary the same way. Ctrl-C is the caller's (``amp.interrupts``): only the main thread
may take signals.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import TYPE_CHECKING

from rich.console import RenderableType

from amp.cli_options import with_options
from amp.destination_url import destination_from_url
from amp.errors import ConfigError, FatalLoadError
from amp.monitoring import loads
from amp.parallel_progress import ParallelProgress, summary
from amp.progress import HeadTracker, LoadStats, ProgressDisplay, head_query_for, pace
from amp.redact import redact_text

if TYPE_CHECKING:
    from amp.client import Client, LoadRun
    from amp.streaming.parallel import ParallelConfig
    from amp.streaming.results import LoadResult

log = logging.getLogger("amp.cli")


def consume(
    load: LoadRun,
    display: ProgressDisplay,
    done: Callable[[LoadResult], bool] | None = None,
    name: str = "amp load",
) -> LoadStats:
    """Show each result of ``load`` until it ends, fails or ``done(result)`` says so."""
    with display:
        for result in load:
            display.update(result)
            if not result.success:
                error = redact_text(result.error or "")
                print(f"{name}: error: {error}", file=sys.stderr, flush=True)
                break
            if done is not None and done(result):
                break
    return display.stats


def serve_metrics_for(args: argparse.Namespace) -> ExitStack:
    """The metrics listener ``--metrics-port`` asks for, closed when the stack is."""
    stack = ExitStack()
    if args.stall_seconds is not None and args.metrics_port is None:
        raise ConfigError("--stall-seconds sets a /healthz rule: add --metrics-port PORT")
    if args.metrics_port is not None:
        from amp.monitoring import DEFAULT_STALL_SECONDS, serve_metrics

        stall = DEFAULT_STALL_SECONDS if args.stall_seconds is None else args.stall_seconds
        server = serve_metrics(args.metrics_port, args.metrics_host, stall_seconds=stall)
        stack.callback(server.close)
        print(f"metrics and health on {server.url}/metrics and /healthz", file=sys.stderr)
    return stack


class CliLoad:
    """A load the flags (or a ``[[load]]`` table) describe, configured but not started:
    a bad option fails here, before any load of the process runs. ``shown``: its display
    draws itself (False when a ``ProgressBoard`` draws every load's line)."""

    def __init__(
        self, args: argparse.Namespace, parallel: ParallelConfig | None, shown: bool = True
    ) -> None:
        from amp.client import Client

        self.args = args
        self.parallel = parallel
        self.started = time.monotonic()
        loader, config = destination_from_url(args.to)
        if args.checkpoint:
            config["checkpoint"] = {"enabled": True}
        if args.idempotency:
            config["idempotency"] = {"enabled": True}
        config = with_options(config, args.options)
        self.client: Client = Client(args.server, auth_token=args.auth_token)
        try:
            self.client.configure_connection(args.connection_name, loader, config)
            self.run, self.display, self.tracker = self._start(shown)
        except BaseException:
            self.client.close()
            raise

    def _start(
        self, shown: bool
    ) -> tuple[LoadRun, ProgressDisplay | ParallelProgress, HeadTracker | None]:
        args = self.args
        hidden = args.no_progress or not shown
        load = self.client.sql(args.query).load(
            args.connection_name,
            args.table,
            stream=args.stream or self.parallel is not None,
            mode=args.mode,
            parallel_config=self.parallel,
        )
        head_sql = head_query_for(args.query)
        tracker = None
        if self.parallel is not None:
            # The head is shown on the live worker's line; a bounded load has none.
            wants_head = not args.no_progress or args.metrics_port is not None
            if head_sql is not None and self.parallel.max_block is None and wants_head:
                tracker = HeadTracker(self.client.transport, head_sql)
            partitions = load.partitions if load.partitions is not None else {}
            return load, ParallelProgress(args.table, partitions, tracker, disabled=hidden), tracker
        if head_sql is not None and args.stream:
            tracker = HeadTracker(self.client.transport, head_sql)
        return load, ProgressDisplay(args.table, tracker, disabled=hidden), tracker

    def renderable(self) -> RenderableType:
        """This load's progress, for a display of several loads."""
        if isinstance(self.display, ParallelProgress):
            return self.display.get_renderable()
        return self.display.render()

    def consume(self, done: Callable[[LoadResult], bool] | None = None) -> None:
        """Run the load to its end (or a stop, or ``done``), showing its progress."""
        tracker = self.tracker
        head = (lambda: tracker.head) if tracker is not None else None
        with loads.watching_head(self.args.table, head):
            if isinstance(self.display, ParallelProgress):
                try:
                    with self.display:
                        for _ in self.run:
                            pass  # the display reads the partitions' states
                except FatalLoadError:
                    # The end of a load with failed partitions; anything else is an error.
                    if not self.partition_failed():
                        raise
            else:
                consume(self.run, self.display, done, self.name)

    @property
    def name(self) -> str:
        label = getattr(self.args, "label", None)
        return f"amp load {label}" if label else "amp load"

    def partition_failed(self) -> bool:
        partitions = self.run.partitions or {}
        return any(state.status == "failed" for state in partitions.values())

    @property
    def failed(self) -> bool:
        if isinstance(self.display, ParallelProgress):
            return self.partition_failed()
        return self.display.stats.failures > 0

    def summary(self) -> list[str]:
        """The lines printed when the load ended."""
        args = self.args
        seconds = time.monotonic() - self.started
        if isinstance(self.display, ParallelProgress):
            partitions = self.run.partitions or {}
            return summary(args.table, partitions, checkpoints=args.checkpoint, seconds=seconds)
        stats = self.display.stats
        return [
            f"loaded {stats.rows:,} rows into {args.table} ({stats.microbatches} microbatches, "
            f"{stats.reorgs} reorgs handled; {pace(stats.rows, seconds)})"
        ]

    def stop_display(self) -> None:
        """Leave the live display now (before a second Ctrl-C ends the process)."""
        if isinstance(self.display, ParallelProgress):
            self.display.stop()

    def close(self) -> None:
        self.run.close()
        self.client.close()
