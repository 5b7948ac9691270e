"""``amp dev``: serves until SIGTERM or SIGINT, prints where it listens, stops cleanly."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow.flight as flight
import pytest
from flightclient import STREAM, call_options, connect, flight_info, read_microbatches, ticket_of

AMP = Path(sys.executable).parent / "amp"
LISTENING = re.compile(r"^Amp dev server listening on (grpc://127\.0\.0\.1:(\d+))$")


class Process:
    """``amp`` as a subprocess whose stdout lines are read on a thread (with timeouts)."""

    def __init__(self, *args: str) -> None:
        self.popen = subprocess.Popen(
            [str(AMP), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def line(self, timeout: float = 20.0) -> str | None:
        """The next stdout line (None at EOF); AssertionError after ``timeout`` seconds."""
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output from amp within {timeout} s") from None

    def rest(self) -> list[str]:
        """Every remaining stdout line, once the process has exited."""
        self._reader.join(timeout=10)
        lines = []
        while (line := self._lines.get_nowait()) is not None:
            lines.append(line)
        return lines

    def stderr(self) -> str:
        assert self.popen.stderr is not None
        return self.popen.stderr.read()

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(timeout=10)


@contextmanager
def amp(*args: str) -> Iterator[Process]:
    process = Process(*args)
    try:
        yield process
    finally:
        process.kill()


def _listening_url(process: Process) -> str:
    first = process.line()
    assert first is not None, process.stderr()
    match = LISTENING.match(first)
    assert match, first
    assert int(match.group(2)) > 0  # port 0 printed as the real port
    return match.group(1)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_amp_dev_serves_and_stops_on_signal(signum: int) -> None:
    with amp("dev", "--port", "0", "--initial-blocks", "10") as process:
        url = _listening_url(process)
        with connect(url) as client:
            info = flight_info(client, "SELECT count(*) AS n FROM eth_firehose.blocks")
            table = client.do_get(ticket_of(info), call_options()).read_all()
        assert table["n"].to_pylist() == [10]
        process.popen.send_signal(signum)
        assert process.popen.wait(timeout=20) == 0
        assert process.rest() == ["Amp dev server stopped"]


def test_amp_dev_stops_with_a_stream_open() -> None:
    """A signal ends the process even while a streaming query is waiting for blocks."""
    with amp("dev", "--port", "0", "--initial-blocks", "5", "--max-interval", "2") as process:
        url = _listening_url(process)
        with connect(url) as client:
            info = flight_info(client, "SELECT * FROM eth_firehose.blocks" + STREAM)
            reader = client.do_get(ticket_of(info), call_options())
            try:
                batches = read_microbatches(reader, 3)
                assert [(b.range.start, b.range.end) for b in batches] == [(0, 1), (2, 3), (4, 4)]
                process.popen.send_signal(signal.SIGTERM)
                assert process.popen.wait(timeout=20) == 0
            finally:
                reader.cancel()
        assert process.rest() == ["Amp dev server stopped"]


def test_amp_dev_options_reach_the_server() -> None:
    args = ["dev", "--port", "0", "--initial-blocks", "7", "--start-block", "1000"]
    args += ["--seed", "9", "--dataset", "my_chain", "--auth-token", "tok"]
    with amp(*args) as process:
        url = _listening_url(process)
        headers = {"authorization": "Bearer tok"}
        with connect(url) as client:
            with pytest.raises(flight.FlightUnauthenticatedError):
                flight_info(client, "SELECT 1")
            info = flight_info(
                client,
                "SELECT min(block_num) AS lo, max(block_num) AS hi FROM my_chain.blocks",
                headers,
            )
            table = client.do_get(ticket_of(info), call_options(headers)).read_all()
        assert table.to_pydict() == {"lo": [1000], "hi": [1006]}
        process.popen.send_signal(signal.SIGTERM)
        assert process.popen.wait(timeout=20) == 0


def test_amp_dev_rejects_bad_arguments_with_exit_code_2() -> None:
    with amp("dev", "--port", "0", "--max-interval", "0") as process:
        assert process.popen.wait(timeout=30) == 2
        assert "max_interval must be >= 1" in process.stderr()
        assert process.rest() == []
