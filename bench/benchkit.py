"""What the destination benchmarks share: a dev server in its own process, the server's
microbatches captured once (so a bare library run times the library alone), and a
streaming load driven to the chain head."""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading

import pyarrow as pa

from amp.client import Client
from amp.streaming.reader import Data, MicrobatchEnd, MicrobatchReader
from amp.streaming.types import BlockRange


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen[str], str]:
    """``amp dev`` with the benchmark's ``seed``, ``blocks``, ``txs_per_block`` and
    ``max_interval``, in its own process (as a real server would be); returns it and its
    URL."""
    command = [sys.executable, "-m", "amp.cli", "dev", "--port", "0", "--seed", str(args.seed)]
    command += ["--initial-blocks", str(args.blocks), "--txs-per-block", str(args.txs_per_block)]
    command += ["--max-interval", str(args.max_interval)]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    return process, line.rsplit(" ", 1)[-1]


def microbatches(url: str, query: str, head: int) -> list[tuple[BlockRange, list[pa.RecordBatch]]]:
    """The server's microbatches of streaming ``query``, from block 0 to ``head``."""
    client = Client(url)
    stream = client.transport.execute(f"{query} SETTINGS stream = true", streaming=None)
    stop = threading.Event()
    captured: list[tuple[BlockRange, list[pa.RecordBatch]]] = []
    current: list[pa.RecordBatch] = []
    try:
        for event in MicrobatchReader(None).events(stream.messages(stop)):
            if isinstance(event, Data):
                current.append(event.batch)
            elif isinstance(event, MicrobatchEnd):
                captured.append((event.block_range, current))
                current = []
                if event.block_range.end >= head:
                    break
    finally:
        stream.close()
        client.close()
    return captured


def stream_to_head(client: Client, query: str, connection: str, table: str, head: int) -> int:
    """Run a streaming load of ``query`` until it has committed block ``head``; closes the
    client and returns the rows loaded."""
    rows = 0
    run = client.sql(query).load(connection, table, stream=True)
    try:
        for result in run:
            assert result.success, result.error
            rows += result.rows_loaded
            if result.metadata["block_ranges"][-1]["end"] == head:
                break
    finally:
        run.close()
        client.close()
    return rows
