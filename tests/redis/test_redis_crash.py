"""Exactly once through crashes, into Redis: a real load process is killed with SIGKILL at
random moments while new blocks and reorgs arrive, and restarted each time. Afterwards
Redis must hold every canonical row exactly once, no row of a forked block, and a block
index with exactly one member per row.

``amp load --to`` takes only PostgreSQL and DuckDB URLs, so the child is
``redis_load_child.py`` (a Client with the 'redis' loader, checkpoints and idempotency).
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis_support import (
    QUERY,
    REDIS_DB,
    REDIS_HOST,
    REDIS_PORT,
    Driven,
    Names,
    assert_exact,
    block_range,
    drive,
    redis_config,
)

from amp.client import Client
from amp.devserver import DevServer

KILLS = 20
CHILD = Path(__file__).with_name("redis_load_child.py")


class LoadProcess:
    """The child load; its stderr is read by a thread (no pipe stalls)."""

    def __init__(self, server_url: str, names: Names, structure: str) -> None:
        command = [
            sys.executable, str(CHILD), "--server", server_url, "--table", names.table,
            "--connection", names.connection, "--structure", structure,
            "--host", REDIS_HOST, "--port", str(REDIS_PORT), "--db", str(REDIS_DB),
        ]  # fmt: skip
        self.started_line = f"Loading checkpoint for connection={names.connection}"
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
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

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self._reader.join(timeout=30)


def crash_and_restart(server: DevServer, names: Names, structure: str, seed: int) -> None:
    """Start the load and kill it KILLS times, each time while it runs."""
    rng = random.Random(seed)
    for attempt in range(KILLS):
        load = LoadProcess(server.url, names, structure)
        try:
            assert load.started.wait(timeout=60), "the load did not start within 60 s"
            if load.process.poll() is not None:
                pytest.fail(
                    f"the load exited by itself (attempt {attempt}):\n{''.join(load.lines)}"
                )
            # The moment of the kill is the experiment's input: anywhere in the next second,
            # which spans MULTI/EXECs, reorgs and waits for new blocks.
            threading.Event().wait(rng.uniform(0.0, 1.0))
            if load.process.poll() is not None:
                pytest.fail(
                    f"the load exited by itself (attempt {attempt}):\n{''.join(load.lines)}"
                )
        finally:
            load.kill()


def catch_up(server: DevServer, names: Names, structure: str) -> Driven:
    """With block production stopped, load in-process until the head is committed (one
    more block is mined, so there is always a microbatch to reach it with)."""
    server.stop_block_production()
    server.chain.mine(1)
    client = Client(server.url)
    config = redis_config(structure, checkpoint=True, idempotency=True)
    client.configure_connection(names.connection, "redis", config)
    try:
        run = client.sql(QUERY).load(names.connection, names.table, stream=True)
        return drive(run, server.chain)
    finally:
        client.close()


def checkpoint_end(client: redis.Redis, names: Names) -> int:
    raw = client.get(names.checkpoint_key())
    assert raw is not None, "the killed loads left no checkpoint"
    return int(json.loads(raw)["ranges"][-1]["end"])


@pytest.fixture
def busy_chain() -> Iterator[DevServer]:
    """A chain that grows 20 blocks a second with a reorg of depth 4 every 15 blocks."""
    with DevServer(
        port=0,
        seed=1,
        initial_blocks=300,
        max_interval=50,
        block_time=0.05,
        reorg_every=15,
        reorg_depth=4,
        mean_txs_per_block=20,
    ) as server:
        yield server


@pytest.mark.slow
@pytest.mark.parametrize("structure", ["hash", "stream"])
def test_redis_exactly_once_through_sigkills(
    structure: str, busy_chain: DevServer, redis_client: redis.Redis, names: Names
) -> None:
    initial_head = busy_chain.chain.head
    crash_and_restart(busy_chain, names, structure, seed=17)
    # What is checked below is the killed loads' work: they got past the initial blocks
    # (so kills hit loads at the head, among reorgs), and the catch-up resumes after them.
    resumed_from = checkpoint_end(redis_client, names)
    assert resumed_from > initial_head, "the killed loads never reached the growing head"
    driven = catch_up(busy_chain, names, structure)
    first = driven.results[0]
    if first.metadata["operation"] != "reorg":
        assert block_range(first)["start"] == resumed_from + 1, "the catch-up started over"
    assert len(busy_chain.chain.reorgs) >= 5, "the run should have seen reorgs"
    assert_exact(redis_client, names.table, structure, busy_chain.chain)
    assert checkpoint_end(redis_client, names) == busy_chain.chain.head
