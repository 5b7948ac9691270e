"""Exactly once into Kafka through crashes: a real ``amp load --to kafka://…`` process is
killed with SIGKILL at random moments while new blocks and reorgs arrive, and restarted
each time (as ``tests/crash`` does for the SQL destinations). Afterwards the table a
read_committed consumer keeps from the topic must be the canonical chain exactly.

Each restart fences the killed producer (same ``transactional.id``), whose open
transaction the broker aborts; the checkpoint in the state topic says where to resume.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from kafkakit import FAST_RESILIENCE, assert_topic_matches_chain, unique

from amp.client import Client
from amp.devserver import DevServer

KILLS = 20
QUERY = "SELECT * FROM eth_firehose.logs"
CONNECTION = "crash"
STARTED_LINE = f"Loading checkpoint for connection={CONNECTION}"


class LoadProcess:
    """``amp load`` in a child process; its stderr is read by a thread (no pipe stalls)."""

    def __init__(self, server_url: str, destination: str, table: str) -> None:
        command = [
            sys.executable, "-m", "amp.cli", "load", "--server", server_url, "--query", QUERY,
            "--to", destination, "--table", table, "--stream", "--checkpoint", "--idempotency",
            "--no-progress", "--connection-name", CONNECTION,
        ]  # fmt: skip
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
            if STARTED_LINE in line:
                self.started.set()
        self.started.set()  # the process ended: let the waiter look at why

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self._reader.join(timeout=30)


def crash_and_restart(server: DevServer, destination: str, table: str, seed: int) -> None:
    rng = random.Random(seed)
    for attempt in range(KILLS):
        load = LoadProcess(server.url, destination, table)
        assert load.started.wait(timeout=60), "amp load did not start within 60 s"
        if load.process.poll() is not None:
            pytest.fail(f"amp load exited by itself (attempt {attempt}):\n{''.join(load.lines)}")
        # The moment of the kill is the experiment's input: anywhere in the next 1.5 s,
        # which spans produces, commits, retractions and waits for new blocks.
        threading.Event().wait(rng.uniform(0.0, 1.5))
        if load.process.poll() is not None:
            pytest.fail(f"amp load exited by itself (attempt {attempt}):\n{''.join(load.lines)}")
        load.kill()


def catch_up(server: DevServer, config: dict[str, object], table: str) -> None:
    """With block production stopped, run the load in-process until it reaches the head
    (one more block is mined so that there is always a microbatch to reach it with)."""
    server.stop_block_production()
    server.chain.mine(1)
    client = Client(server.url)
    client.configure_connection(
        CONNECTION,
        "kafka",
        {
            **config,
            "checkpoint": {"enabled": True},
            "idempotency": {"enabled": True},
            "resilience": FAST_RESILIENCE,
        },
    )
    head = server.chain.head
    run = client.sql(QUERY).load(CONNECTION, table, stream=True)
    try:
        for result in run:
            assert result.success, result.error
            ranges = result.metadata.get("block_ranges") or []
            if ranges and ranges[-1]["end"] == head:
                break
    finally:
        run.close()
        client.close()


@pytest.fixture
def busy_chain() -> Iterator[DevServer]:
    """A chain that grows 20 blocks a second with a reorg of depth 4 every 15 blocks."""
    with DevServer(
        port=0,
        seed=7,
        initial_blocks=2_000,
        max_interval=300,
        block_time=0.05,
        reorg_every=15,
        reorg_depth=4,
        mean_txs_per_block=30,
    ) as server:
        yield server


@pytest.mark.slow
def test_kafka_exactly_once_through_sigkills(busy_chain: DevServer, bootstrap: str) -> None:
    topic = unique("crash")
    crash_and_restart(busy_chain, f"kafka://{bootstrap}/{topic}", "crash_logs", seed=17)
    catch_up(busy_chain, {"bootstrap_servers": bootstrap, "topic": topic}, "crash_logs")
    assert len(busy_chain.chain.reorgs) >= 5, "the run should have seen reorgs"
    assert_topic_matches_chain(bootstrap, topic, busy_chain.chain)
