"""The crash harness shared by every destination's crash test: start a real load process,
kill it with SIGKILL at a random moment once it runs, and do it again, ``kills`` times.

A load process must log ``Loading checkpoint for connection=<name>`` (at INFO, on stderr)
when it starts; the harness waits for that line, then for a random delay (the moment of
the kill is the experiment's input), then kills it.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence

import pytest

from amp.client import Client
from amp.devserver import DevServer


def amp_load_command(server_url: str, query: str, destination: str, table: str,
                     connection: str) -> list[str]:  # fmt: skip
    """``amp load`` streaming with checkpoints and idempotency, without the progress line."""
    return [
        sys.executable, "-m", "amp.cli", "load", "--server", server_url, "--query", query,
        "--to", destination, "--table", table, "--stream", "--checkpoint", "--idempotency",
        "--no-progress", "--connection-name", connection,
    ]  # fmt: skip


class LoadProcess:
    """A load in a child process; its stderr is read by a thread (no pipe stalls)."""

    def __init__(self, command: Sequence[str], connection: str) -> None:
        self.started_line = f"Loading checkpoint for connection={connection}"
        self.process = subprocess.Popen(
            list(command), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        self.lines: list[str] = []
        self.started = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            if self.started_line in line:
                self.started.set()
        self.started.set()  # the process ended: let the waiter look at why

    def fail_if_exited(self, attempt: int) -> None:
        if self.process.poll() is not None:
            pytest.fail(f"the load exited by itself (attempt {attempt}):\n{''.join(self.lines)}")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self._reader.join(timeout=30)


def crash_and_restart(
    command: Sequence[str], connection: str, seed: int, kills: int = 20, window: float = 1.5
) -> None:
    """Start the load and kill it ``kills`` times, each time within ``window`` seconds
    after it started (spanning writes, commits, reorgs and waits for new blocks)."""
    rng = random.Random(seed)
    for attempt in range(kills):
        load = LoadProcess(command, connection)
        try:
            assert load.started.wait(timeout=60), "the load did not start within 60 s"
            load.fail_if_exited(attempt)
            threading.Event().wait(rng.uniform(0.0, window))
            load.fail_if_exited(attempt)
        finally:
            load.kill()


CRASH_QUERY = "SELECT * FROM eth_firehose.logs"


def busy_chain_server(initial_blocks: int) -> DevServer:
    """A chain that grows 20 blocks a second with a reorg of depth 4 every 15 blocks."""
    return DevServer(
        port=0,
        seed=7,
        initial_blocks=initial_blocks,
        max_interval=300,
        block_time=0.05,
        reorg_every=15,
        reorg_depth=4,
        mean_txs_per_block=30,
    )


def crash_and_restart_amp_load(
    server: DevServer, destination: str, table: str, connection: str, seed: int
) -> None:
    """``crash_and_restart`` of ``amp load`` streaming CRASH_QUERY into ``destination``."""
    command = amp_load_command(server.url, CRASH_QUERY, destination, table, connection)
    crash_and_restart(command, connection, seed)


def catch_up(
    server: DevServer, connection: str, loader: str, config: dict[str, object], table: str
) -> None:
    """With block production stopped, run the load in-process (checkpoints and
    idempotency on) until it reaches the head. One more block is mined first, so there is
    always a microbatch to reach the head with, even when a killed run committed the last."""
    server.stop_block_production()
    server.chain.mine(1)
    client = Client(server.url)
    client.configure_connection(
        connection,
        loader,
        {**config, "checkpoint": {"enabled": True}, "idempotency": {"enabled": True}},
    )
    head = server.chain.head
    run = client.sql(CRASH_QUERY).load(connection, table, stream=True)
    try:
        for result in run:
            assert result.success, result.error
            ranges = result.metadata.get("block_ranges") or []
            if ranges and ranges[-1]["end"] == head:
                break
    finally:
        run.close()
        client.close()
