"""Ctrl-C during a CLI load: the first stops it at a microbatch boundary, a second at once.

Why two steps: a stop at a boundary commits nothing half-done and leaves a checkpoint to
resume from, but it may wait for a microbatch or a backoff to end; whoever cannot wait
presses again, and the open transaction rolls back instead. The single load and the
parallel load and the loads of a config file share this, so all answer Ctrl-C the same
way. Where the loads run in threads (a parallel load's workers, a config file's loads),
the second Ctrl-C ends the process (``exit_at_once``): threads cannot be interrupted, and
their connections close with the process, so the databases roll back what was open.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from amp.client import LoadRun

log = logging.getLogger("amp.cli")


def interrupted_line(command: str) -> str:
    """The one line a second Ctrl-C prints before the shell's exit code 130."""
    return f"amp {command}: interrupted; an open transaction was rolled back"


def exit_at_once(command: str, before: Callable[[], None] = lambda: None) -> None:
    """End the process with the interrupted line and 130, without unwinding into loads
    whose threads would wait for their microbatches and backoffs; ``before`` stops the
    display first."""
    logging.disable(logging.CRITICAL)  # nothing after the one line
    for handler in logging.getLogger().handlers:
        handler.acquire()  # a record another thread is writing ends first; no more
    before()
    print(interrupted_line(command), file=sys.stderr, flush=True)
    os._exit(130)


@contextmanager
def ctrl_c_stops(
    load: LoadRun | Sequence[LoadRun], at_once: Callable[[], None] | None = None
) -> Iterator[None]:
    """Inside the block, the first Ctrl-C calls ``stop()`` of the load (of every load of a
    sequence); a second calls ``at_once`` (when given) and raises KeyboardInterrupt. The
    loads are closed on the way out."""
    runs = list(load) if isinstance(load, Sequence) else [load]
    sigints = 0

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        nonlocal sigints
        sigints += 1
        if sigints == 1:
            for run in runs:
                run.stop()
            log.info("stopping at the next microbatch boundary; Ctrl-C again stops at once")
            return
        # Further Ctrl-Cs must not interrupt the cleanup this one starts.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if at_once is not None:
            at_once()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        if sigints < 2:
            signal.signal(signal.SIGINT, previous)
        for run in runs:
            run.close()
