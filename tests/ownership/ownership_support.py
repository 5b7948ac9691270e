"""Real ``amp load`` processes racing for one stream, and the checks the tests share."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from amp.devserver import DevServer
from crashkit import LoadProcess, amp_load_command
from kit import LOGS_QUERY

EXIT_SECONDS = 30


def load_command(server: DevServer, destination: str, table: str, connection: str) -> list[str]:
    return amp_load_command(server.url, LOGS_QUERY, destination, table, connection)


@contextmanager
def running_load(command: list[str], connection: str) -> Iterator[LoadProcess]:
    """A load process that has claimed its stream (it logged its start line); killed
    on exit if still running."""
    load = LoadProcess(command, connection)
    try:
        assert load.started.wait(timeout=60), "the load did not start within 60 s"
        assert load.process.poll() is None, "the load exited:\n" + "".join(load.lines)
        yield load
    finally:
        load.kill()


def refused(command: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a load that must be refused: it has to exit by itself (non-zero) promptly."""
    finished = subprocess.run(command, capture_output=True, text=True, timeout=EXIT_SECONDS)
    assert finished.returncode != 0, f"a second load of the stream ran:\n{finished.stderr}"
    return finished


def stop_gracefully(load: LoadProcess) -> None:
    """Ctrl-C: the load stops at a microbatch boundary and releases its stream."""
    load.process.send_signal(2)
    assert load.process.wait(timeout=EXIT_SECONDS) == 0, "".join(load.lines)


def python() -> str:
    return sys.executable
