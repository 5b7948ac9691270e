"""Kafka loader: one message per row, exactly once through Kafka transactions.

Messages. Each row is one message on the table's topic (``topic``, else the destination
table's name). Its value is the row as JSON (binaries ``"0x…"`` hex, decimals as strings,
timestamps ISO-8601, nulls ``null``) or, with ``value_format='arrow'``, an Arrow IPC
stream holding that one row. Its headers: ``amp-network``, ``amp-block-range``
(``start-end`` of the microbatch), ``amp-block-hash`` (hash of the range's end block),
``amp-block`` (the row's block), ``_amp_op`` (``upsert``) and ``amp-writer`` (the
producer's ``transactional.id``).

Keys. The key is ``key_column``'s value or else the deterministic row id
``{table}:{network}:{block}:{position}``, position being the row's index among the rows
of its block in the order the server sends them. Why: a replayed microbatch, and a
reorg's replacement of a block, write the *same keys*, which is what a compacted topic
and a consumer keeping a table by key need: upsert by key, a null value (tombstone)
deletes. The table name namespaces the id because one topic may take several tables.
(It assumes the server returns a block's rows in a stable order, as Amp does for scans;
a query whose order within a block varies must set ``key_column``. A ``key_column`` must
be unique per row, like a primary key.)

Why ``transactional = True``: Kafka transactions are atomic for ``read_committed``
consumers. ``begin``/``commit``/``rollback`` are a producer transaction whose
``transactional.id`` is ``amp-{connection}-{table}-0``: starting a producer with it
fences a previous (crashed) one and aborts its open transaction. A microbatch's messages
and its delivery state go in the same transaction: ``state_store(prefix)`` keeps
checkpoints and processed ranges as keyed JSON records in a compacted state topic
(``state_topic``, default ``amp_state``), mirrored in memory. The mirror of a table is
rebuilt when the table is first used: zombie fenced first, then the state topic read
from the beginning, ``read_committed``, to its end. Writes in a transaction are staged
and reach the mirror only when the transaction commits.

Reorgs and replays. Messages cannot be deleted, so ``delete_blocks`` publishes a
retraction for every key previously published for those blocks: a tombstone with
header ``_amp_op: delete``, before the new data; it returns how many. A per-block index
of published keys (row counts, or the keys themselves with ``key_column``) lives in the
state topic, written in the same transactions, and keeps the last
``retraction_window_blocks`` blocks (default 100,000: reorgs are shallow, older blocks
final; it bounds memory and the state topic). A commit also retracts what its writes
leave stale without a ``delete_blocks`` (a rewritten block with fewer rows, a block of a
written range that has no rows now), so a load restarted from scratch converges too.

Topics. ``prepare_table`` creates a missing topic (``partitions``, default 1;
``replication_factor``, default the broker's); the state topic gets one partition and
``cleanup.policy=compact``. Keys are partitioned with ``murmur2_random`` (as Java
producers do), so a tombstone lands where its row did. ``mode='overwrite'`` is refused:
a topic's messages cannot be replaced.

Beyond read_committed. A consumer reading uncommitted data (Java's default), or a broker
that does not filter aborted transactions out of ``read_committed`` fetches (tansu 0.6
does not), sees the messages of aborted transactions. So that a table kept from the
topic still ends exact, the loader (1) flushes a transaction's rows before producing its
state records, so state visible implies its rows are there; (2) remembers the keys of a
transaction it aborted; (3) on start, scans the topic's tail after its last committed
position for its own uncommitted messages (those of a producer killed mid-transaction).
Such keys are retracted by the next transaction that covers their blocks, unless that
transaction writes them again. The cost on a conforming broker: a few tombstones for
keys ``read_committed`` consumers never saw.

Layout of the state topic (key → JSON value; a null value deletes)::

    ["<prefix>", "checkpoint", conn, table, worker]             checkpoint document
    ["<prefix>", "checkpoint_history", conn, table, worker, ts] a superseded checkpoint
    ["<prefix>", "processed", conn, table, network, start, end, hash]  a processed range
    ["", "index", conn, table, block]     {"topic", "network", "count"} or {..., "keys"}
    ["", "scan", conn, table, topic]      {"offsets": {partition: offset}}: scan from here
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as dt_time
from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from confluent_kafka import (
    Consumer,
    IsolationLevel,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec

from amp.config import number_at_least, typed
from amp.errors import ConfigError, DestinationError
from amp.loaders.base import Loader, LoadMode
from amp.streaming.state import ProcessedRange
from amp.streaming.types import BlockRange

log = logging.getLogger("amp.loaders.kafka")

_FORMATS = ("json", "arrow")
_COMPRESSIONS = ("none", "gzip", "snappy", "lz4", "zstd")
_ACKS_ALL = ("all", "-1", -1)
_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
# Set by the loader; producer_config may not change them (exactly-once depends on them).
_RESERVED = frozenset(
    {"bootstrap.servers", "transactional.id", "enable.idempotence", "isolation.level"}
)
# producer_config keys that also apply to the admin client and consumers (security,
# networking); producer-only keys would only draw librdkafka warnings there.
_SHARED_PREFIXES = (
    "security.",
    "sasl.",
    "ssl.",
    "socket.",
    "broker.",
    "client.",
    "connections.",
    "reconnect.",
    "metadata.",
    "api.version",
    "enable.ssl",
    "enable.sasl",
    "topic.metadata",
    "debug",
    "log_level",
)
_SECRET_WORDS = ("password", "secret", "token", "jaas", "key")
_DEFAULT_STATE_TOPIC = "amp_state"
_DEFAULT_WINDOW = 100_000
_SCAN_EVERY_SECONDS = 5.0
# Longest wait for another writer's open transaction on the state topic (its producer
# may have died: the broker aborts it after transaction.timeout.ms, 60 s by default).
_STATE_READ_SECONDS = 90.0
_EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"
_HEX_PAIRS = np.frombuffer(
    b"".join(f"{i:02x}".encode() for i in range(256)), dtype=np.uint8
).reshape(256, 2)

StateKey = tuple[Any, ...]


# -- values ------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """A Python value (from ``to_pylist``) in the JSON form the messages use."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, bytes | bytearray | memoryview):
        return "0x" + bytes(value).hex()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date | dt_time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        # map columns come back as lists of (key, value) pairs
        return [_jsonable(v) for v in value]
    return str(value)


def _key_text(value: Any) -> str:
    """A ``key_column`` value as the message key (text, binaries as ``0x…``)."""
    converted = _jsonable(value)
    return converted if isinstance(converted, str) else json.dumps(converted)


def _fixed_hex_fragments(array: pa.FixedSizeBinaryArray) -> pa.Array:
    """``_hex_fragments`` for fixed-width binaries (hashes, addresses): one 2-D fill."""
    width = array.type.byte_width
    rows = len(array)
    data = np.frombuffer(array.buffers()[1], dtype=np.uint8)[
        array.offset * width : (array.offset + rows) * width
    ]
    out = np.empty((rows, 2 * width + 4), dtype=np.uint8)
    out[:, :3] = np.frombuffer(b'"0x', dtype=np.uint8)
    out[:, 3:-1] = _HEX_PAIRS[data].reshape(rows, 2 * width)
    out[:, -1] = ord('"')
    offsets = np.arange(rows + 1, dtype=np.int64) * (2 * width + 4)
    strings = pa.LargeStringArray.from_buffers(
        rows, pa.py_buffer(offsets), pa.py_buffer(out.reshape(-1))
    )
    if array.null_count == 0:
        return strings
    return pc.if_else(array.is_valid(), strings, pa.scalar(None, pa.large_string()))


def _hex_fragments(array: pa.Array) -> pa.Array:
    """Binary values as JSON strings ``"0x…"``, vectorised (nulls stay null)."""
    if pa.types.is_fixed_size_binary(array.type):
        return _fixed_hex_fragments(array)
    offset_type = np.int64 if pa.types.is_large_binary(array.type) else np.int32
    buffers = array.buffers()
    offsets = np.frombuffer(buffers[1], dtype=offset_type)[
        array.offset : array.offset + len(array) + 1
    ].astype(np.int64)
    data = (
        np.frombuffer(buffers[2], dtype=np.uint8)
        if buffers[2] is not None
        else np.empty(0, np.uint8)
    )
    hexed = _HEX_PAIRS[data[offsets[0] : offsets[-1]]].reshape(-1)
    lengths = np.diff(offsets) * 2 + 4
    out_offsets = np.zeros(len(array) + 1, dtype=np.int64)
    np.cumsum(lengths, out=out_offsets[1:])
    out = np.empty(int(out_offsets[-1]), dtype=np.uint8)
    starts, ends = out_offsets[:-1], out_offsets[1:] - 1
    body = np.ones(len(out), dtype=bool)
    for shift, char in ((0, b'"'), (1, b"0"), (2, b"x")):
        body[starts + shift] = False
        out[starts + shift] = char[0]
    body[ends] = False
    out[ends] = ord('"')
    out[body] = hexed
    strings = pa.LargeStringArray.from_buffers(
        len(array), pa.py_buffer(out_offsets), pa.py_buffer(out)
    )
    return pc.if_else(array.is_valid(), strings, pa.scalar(None, pa.large_string()))


def _quoted(text: pa.Array, after: str = '"') -> pa.Array:
    """``"text"`` (``after`` closes it), null where ``text`` is null."""
    return pc.binary_join_element_wise(
        pa.scalar('"', pa.large_string()),
        text.cast(pa.large_string()),
        pa.scalar(after, pa.large_string()),
        pa.scalar("", pa.large_string()),
    )


def _timestamp_fragments(array: pa.Array) -> pa.Array:
    """ISO-8601 in quotes: UTC with ``Z`` when the column has a time zone; no fraction
    when every value is a whole second."""
    unit_type: pa.TimestampType = array.type
    aware = unit_type.tz is not None
    if aware:
        array = array.cast(pa.timestamp(unit_type.unit, tz="UTC"))
    if unit_type.unit != "s":
        per_second = {"ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[unit_type.unit]
        raw = array.cast(pa.int64())
        seconds = pc.multiply(pc.divide(raw, per_second), per_second)  # integer division
        if pc.all(pc.equal(seconds, raw)).as_py() is not False:
            array = array.cast(pa.timestamp("s", tz="UTC" if aware else None))
    text = pc.strftime(array, format="%Y-%m-%dT%H:%M:%S")
    return _quoted(text, 'Z"' if aware else '"')


def _python_fragments(array: pa.Array, dumps: Callable[[Any], str]) -> pa.Array:
    return pa.array(
        [None if v is None else dumps(v) for v in array.to_pylist()], type=pa.large_string()
    )


def _dumps_any(value: Any) -> str:
    return json.dumps(_jsonable(value), ensure_ascii=False, separators=(",", ":"))


def _json_fragments(array: pa.Array) -> pa.Array:
    """Each value of ``array`` as JSON text (null where the value is null)."""
    kind = array.type
    if pa.types.is_null(kind):
        return pa.nulls(len(array), pa.large_string())
    if pa.types.is_boolean(kind):
        return pc.if_else(
            array, pa.scalar("true", pa.large_string()), pa.scalar("false", pa.large_string())
        )
    if pa.types.is_integer(kind):
        return array.cast(pa.large_string())
    if pa.types.is_decimal(kind):
        return _quoted(array)
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return _hex_fragments(array)
    if pa.types.is_fixed_size_binary(kind):
        return _hex_fragments(array)
    if pa.types.is_timestamp(kind):
        return _timestamp_fragments(array)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return _python_fragments(array, lambda v: json.dumps(v, ensure_ascii=False))
    return _python_fragments(array, _dumps_any)


def json_values(batch: pa.RecordBatch) -> list[bytes]:
    """The rows of ``batch`` as JSON objects (UTF-8), built column by column."""
    if batch.num_rows == 0:
        return []
    pieces: list[Any] = []
    for index, name in enumerate(batch.schema.names):
        fragment = _json_fragments(batch.column(index)).fill_null("null")
        label = ("{" if index == 0 else ",") + json.dumps(name, ensure_ascii=False) + ":"
        pieces.append(pa.scalar(label, pa.large_string()))
        pieces.append(fragment.cast(pa.large_string()))
    if not pieces:
        return [b"{}"] * batch.num_rows
    pieces.append(pa.scalar("}", pa.large_string()))
    joined = pc.binary_join_element_wise(*pieces, pa.scalar("", pa.large_string()))
    return joined.cast(pa.large_binary()).to_pylist()


def arrow_values(batch: pa.RecordBatch) -> list[bytes]:
    """Each row of ``batch`` as its own Arrow IPC stream (schema, one-row batch, end)."""
    has_dictionary = any(pa.types.is_dictionary(f.type) for f in batch.schema)
    if has_dictionary:
        values = []
        for row in range(batch.num_rows):
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, batch.schema) as writer:
                writer.write_batch(batch.slice(row, 1))
            values.append(sink.getvalue().to_pybytes())
        return values
    schema = batch.schema.serialize().to_pybytes()
    return [
        schema + batch.slice(row, 1).serialize().to_pybytes() + _EOS
        for row in range(batch.num_rows)
    ]


# -- transactions ----------------------------------------------------------------------


@dataclass
class _Written:
    """The rows one transaction published for one block."""

    topic: str
    network: str
    count: int = 0
    keys: list[str] | None = None  # with key_column


@dataclass
class _Txn:
    """What the open transaction holds: broker side (lazily begun) and staged state."""

    started: bool = False
    table: str | None = None
    produced: int = 0
    written: dict[int, _Written] = field(default_factory=dict)
    retracted: set[int] = field(default_factory=set)
    covered: list[tuple[int, int]] = field(default_factory=list)  # block ranges written
    staged: dict[StateKey, Any] = field(default_factory=dict)  # insertion = write order

    @property
    def empty(self) -> bool:
        return self.produced == 0 and not self.staged


@dataclass
class _Prepared:
    """A table ready for writes: its topic and how its rows name their block and key."""

    topic: str
    block_column: str
    partitions: list[int]


class _Mirror:
    """The committed state records of one table, by kind (as last written)."""

    def __init__(self) -> None:
        self.kinds: dict[str, dict[StateKey, Any]] = {}
        self.index_blocks: list[int] = []  # sorted blocks present in the index

    def get(self, key: StateKey) -> Any:
        return self.kinds.get(key[1], {}).get(key)

    def apply(self, key: StateKey, value: Any) -> None:
        kind = self.kinds.setdefault(key[1], {})
        is_index = key[1] == "index"
        if value is None:
            if kind.pop(key, None) is not None and is_index:
                position = bisect.bisect_left(self.index_blocks, key[4])
                if position < len(self.index_blocks) and self.index_blocks[position] == key[4]:
                    del self.index_blocks[position]
            return
        if is_index and key not in kind:
            bisect.insort(self.index_blocks, key[4])
        kind[key] = value


def _state_key(raw: bytes | None) -> StateKey | None:
    if raw is None:
        return None
    try:
        key = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(key, list) or len(key) < 4:
        return None
    return tuple(key)


class KafkaLoader(Loader):
    """Loads into Kafka topics. Keys: bootstrap_servers, topic, compression, acks,
    client_id, value_format ('json' or 'arrow'), key_column, state_topic,
    producer_config, partitions, replication_factor, timeout,
    retraction_window_blocks."""

    loader_type = "kafka"
    transactional = True
    supports_overwrite = False
    config_keys = frozenset(
        {
            "bootstrap_servers",
            "topic",
            "compression",
            "acks",
            "client_id",
            "value_format",
            "key_column",
            "state_topic",
            "producer_config",
            "partitions",
            "replication_factor",
            "timeout",
            "retraction_window_blocks",
        }
    )

    def __init__(self, config: Mapping[str, Any], connection_name: str = "") -> None:
        super().__init__(config, connection_name)
        where = "kafka config"
        if "bootstrap_servers" not in self.config:
            raise ConfigError(f"{where} needs 'bootstrap_servers', e.g. 'kafka1:9092,kafka2:9092'")
        servers = typed(where, "bootstrap_servers", self.config["bootstrap_servers"], str)
        if not servers.strip():
            raise ConfigError(f"{where}['bootstrap_servers'] is empty; e.g. 'localhost:9092'")
        self.bootstrap_servers = servers.strip()
        for key in ("topic", "client_id", "key_column", "state_topic"):
            if key in self.config:
                typed(where, key, self.config[key], str)
        self.topic: str | None = self.config.get("topic")
        if self.topic is not None:
            _check_topic_name(where, "topic", self.topic)
        self.state_topic: str = self.config.get("state_topic", _DEFAULT_STATE_TOPIC)
        _check_topic_name(where, "state_topic", self.state_topic)
        if self.topic is not None and self.topic == self.state_topic:
            raise ConfigError(f"{where}: 'topic' and 'state_topic' must differ")
        self.value_format = self.config.get("value_format", "json")
        if self.value_format not in _FORMATS:
            raise ConfigError(
                f"{where}['value_format'] must be one of {', '.join(_FORMATS)}, "
                f"got {self.value_format!r}"
            )
        self.compression = self.config.get("compression", "none")
        if self.compression not in _COMPRESSIONS:
            raise ConfigError(
                f"{where}['compression'] must be one of {', '.join(_COMPRESSIONS)}, "
                f"got {self.compression!r}"
            )
        acks = self.config.get("acks", "all")
        if isinstance(acks, bool) or acks not in _ACKS_ALL:
            raise ConfigError(
                f"{where}['acks'] must be 'all' (or -1), got {acks!r}: exactly-once delivery "
                "uses an idempotent, transactional producer, which Kafka only allows with "
                "acks=all"
            )
        self.key_column: str | None = self.config.get("key_column")
        partitions = self.config.get("partitions", 1)
        typed(where, "partitions", partitions, int)
        self.partitions: int = number_at_least(where, "partitions", partitions, 1)
        replication = self.config.get("replication_factor", -1)
        typed(where, "replication_factor", replication, int)
        if replication < 1 and replication != -1:
            raise ConfigError(
                f"{where}['replication_factor'] must be >= 1 (or -1 for the broker's "
                f"default), got {replication!r}"
            )
        self.replication_factor: int = replication
        self.timeout = float(number_at_least(where, "timeout", self.config.get("timeout", 10), 0.1))
        window = self.config.get("retraction_window_blocks", _DEFAULT_WINDOW)
        typed(where, "retraction_window_blocks", window, int)
        number_at_least(where, "retraction_window_blocks", window, 1)
        self.window: int = window
        extra = self.config.get("producer_config", {})
        if not isinstance(extra, Mapping):
            raise ConfigError(
                f"{where}['producer_config'] must be a dict of librdkafka settings, "
                f"got {type(extra).__name__}"
            )
        for key, value in extra.items():
            if not isinstance(key, str):
                raise ConfigError(f"{where}['producer_config'] keys must be strings: {key!r}")
            if key in _RESERVED:
                raise ConfigError(
                    f"{where}['producer_config'] may not set {key!r}: amp sets it "
                    + (
                        "(use 'bootstrap_servers')"
                        if key == "bootstrap.servers"
                        else "for exactly-once delivery"
                    )
                )
            if not isinstance(value, str | int | float | bool):
                raise ConfigError(
                    f"{where}['producer_config'][{key!r}] must be a string, number or bool"
                )
        for own, librdkafka in (
            ("compression", "compression.type"),
            ("acks", "acks"),
            ("client_id", "client.id"),
        ):
            if own in self.config and librdkafka in extra:
                raise ConfigError(
                    f"{where}: set {librdkafka!r} either as {own!r} or in producer_config, not both"
                )
        self.producer_config: dict[str, Any] = dict(extra)
        self._check_client_settings()
        self._admin: AdminClient | None = None
        self._producer: Producer | None = None
        self._producer_table: str | None = None
        self._mirror_table: str | None = None
        self._mirror = _Mirror()
        self._dirty: dict[int, dict[str, str]] = {}  # block → key → topic
        self._txn: _Txn | None = None
        self._prepared: dict[str, _Prepared] = {}
        self._last_scan_advance = 0.0

    # -- description and configuration ---------------------------------------------------

    def describe(self) -> str:
        return f"kafka://{self.bootstrap_servers}/{self.topic or '<table>'}"

    def _redact(self, text: str) -> str:
        """``text`` with the values of secret-looking producer_config keys hidden."""
        for key, value in self.producer_config.items():
            if any(word in key.lower() for word in _SECRET_WORDS) and str(value):
                text = text.replace(str(value), "***")
        return text

    def _client_config(self, producer: bool) -> dict[str, Any]:
        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "client.id": self.config.get("client_id", f"amp-{self.connection_name or 'kafka'}"),
            "logger": logging.getLogger("amp.loaders.kafka.librdkafka"),
        }
        if producer:
            config.update(
                {
                    "acks": "all",
                    "compression.type": self.compression,
                    "linger.ms": 5,
                    "queue.buffering.max.messages": 1_000_000,
                    "partitioner": "murmur2_random",
                }
            )
            config.update(self.producer_config)
        else:
            config.update(
                {k: v for k, v in self.producer_config.items() if k.startswith(_SHARED_PREFIXES)}
            )
        return config

    def _check_client_settings(self) -> None:
        """Let librdkafka judge the settings now (no broker is contacted), so a bad
        producer_config fails at configure_connection, not mid-load."""
        config = self._client_config(producer=True)
        config["transactional.id"] = "amp-settings-check"
        try:
            Producer(config)
        except (KafkaException, ValueError, TypeError) as exc:
            raise ConfigError(self._redact(f"invalid Kafka producer settings: {exc}")) from exc

    def _failure(self, what: str, exc: BaseException) -> DestinationError:
        """A DestinationError for ``what`` caused by ``exc`` (which the classifier reads:
        retriable Kafka errors are transient, authorization errors permanent)."""
        if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
            error: KafkaError = exc.args[0]
            name = error.name()
            hint = ""
            if "AUTHORIZATION" in name:
                hint = "; the principal lacks an ACL for this: grant it or change the config"
            elif name in ("_TRANSPORT", "_ALL_BROKERS_DOWN", "_TIMED_OUT", "_RESOLVE"):
                hint = "; check bootstrap_servers and that the brokers are running"
            failure = DestinationError(
                self._redact(
                    f"Kafka at {self.bootstrap_servers}: {what} failed: {error.str()} "
                    f"({name}){hint}"
                )
            )
        else:
            failure = DestinationError(
                self._redact(f"Kafka at {self.bootstrap_servers}: {what} failed: {exc}")
            )
        failure.__cause__ = exc
        return failure

    def _transactional_id(self, table: str) -> str:
        return f"amp-{self.connection_name}-{table}-0"

    def topic_for(self, table: str) -> str:
        """The topic rows of ``table`` go to: ``topic`` when set, else the table name."""
        topic = self.topic or table
        _check_topic_name("kafka destination", "topic", topic)
        return topic

    # -- connection ----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._admin is not None

    def connect(self) -> None:
        """Reach the cluster (within ``timeout``) and make sure the state topic exists."""
        if self._admin is not None:
            return
        try:
            admin = AdminClient(self._client_config(producer=False))
        except KafkaException as exc:
            raise ConfigError(self._redact(f"invalid Kafka client settings: {exc}")) from exc
        try:
            metadata = admin.list_topics(timeout=self.timeout)
        except KafkaException as exc:
            raise self._failure(f"reaching the cluster within {self.timeout:g} s", exc) from exc
        self._admin = admin
        if self.state_topic not in metadata.topics:
            self._create_topic(self.state_topic, 1, {"cleanup.policy": "compact"})

    def close(self) -> None:
        self.rollback()
        self._producer = None
        self._producer_table = None
        self._mirror_table = None
        self._mirror = _Mirror()
        self._dirty = {}
        self._prepared.clear()
        self._admin = None

    @property
    def admin(self) -> AdminClient:
        if self._admin is None:
            self.connect()
        assert self._admin is not None
        return self._admin

    def _create_topic(self, topic: str, partitions: int, config: dict[str, str]) -> None:
        new = NewTopic(
            topic,
            num_partitions=partitions,
            replication_factor=self.replication_factor,
            config=config,
        )
        future = self.admin.create_topics([new], request_timeout=self.timeout)[topic]
        try:
            future.result(timeout=self.timeout)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                return
            raise self._failure(f"creating topic {topic!r}", exc) from exc
        log.info("Created Kafka topic %s (%d partitions)", topic, partitions)

    def _partitions(self, topic: str) -> list[int] | None:
        """The partitions of ``topic``, or None when it does not exist (never creates it:
        asking the metadata of one missing topic may auto-create it)."""
        try:
            metadata = self.admin.list_topics(timeout=self.timeout)
        except KafkaException as exc:
            raise self._failure("reading cluster metadata", exc) from exc
        found = metadata.topics.get(topic)
        if found is None:
            return None
        if found.error is not None:
            raise self._failure(f"reading metadata of topic {topic!r}", KafkaException(found.error))
        return sorted(found.partitions)

    def _high_watermarks(self, topic: str, partitions: Iterable[int]) -> dict[int, int]:
        """Each partition's end offset, counting uncommitted messages."""
        request = {TopicPartition(topic, p): OffsetSpec.latest() for p in partitions}
        if not request:
            return {}
        futures = self.admin.list_offsets(
            request,
            isolation_level=IsolationLevel.READ_UNCOMMITTED,
            request_timeout=self.timeout,
        )
        try:
            return {tp.partition: f.result().offset for tp, f in futures.items()}
        except KafkaException as exc:
            raise self._failure(f"reading the end offsets of topic {topic!r}", exc) from exc

    def _consumer(self, committed_only: bool) -> Consumer:
        config = self._client_config(producer=False)
        config.update(
            {
                "group.id": f"amp-reader-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "isolation.level": "read_committed" if committed_only else "read_uncommitted",
                "auto.offset.reset": "earliest",
            }
        )
        return Consumer(config)

    def _read(
        self, topic: str, start: Mapping[int, int], committed_only: bool, seconds: float
    ) -> Iterator[Any]:
        """Messages of ``topic`` from ``start`` (partition → offset) to the end offsets
        taken now; with ``committed_only``, those of committed transactions (waiting
        while another writer's transaction is open)."""
        ends = self._high_watermarks(topic, start)
        pending = {p for p, end in ends.items() if end > start[p]}
        if not pending:
            return
        consumer = self._consumer(committed_only)
        deadline = time.monotonic() + seconds
        try:
            consumer.assign([TopicPartition(topic, p, start[p]) for p in sorted(pending)])
            while pending:
                if time.monotonic() > deadline:
                    raise self._failure(
                        f"reading topic {topic!r} to its end",
                        KafkaException(
                            KafkaError(
                                KafkaError._TIMED_OUT,
                                f"not at the end after {seconds:g} s (an open transaction "
                                "of another producer?)",
                                retriable=True,
                            )
                        ),
                    )
                for message in consumer.consume(num_messages=10_000, timeout=0.2):
                    error = message.error()
                    if error is None:
                        if message.offset() >= ends[message.partition()]:
                            continue
                        yield message
                    elif error.code() != KafkaError._PARTITION_EOF:
                        raise self._failure(f"reading topic {topic!r}", KafkaException(error))
                for position in consumer.position(
                    [TopicPartition(topic, p) for p in sorted(pending)]
                ):
                    if position.offset >= ends[position.partition]:
                        pending.discard(position.partition)
        finally:
            consumer.close()

    # -- the producer and the mirror of one table ---------------------------------------

    def _use_table(self, table: str) -> None:
        """Make ``table`` the current one: its producer (fencing any zombie with its
        ``transactional.id``), then its state mirror, read after the fence."""
        if self._txn is not None and self._txn.table not in (None, table):
            raise DestinationError(
                f"one Kafka transaction cannot span tables {self._txn.table!r} and {table!r}"
            )
        if self._producer is None or self._producer_table != table:
            self._start_producer(table)
        if self._mirror_table != table:
            self._rebuild_mirror(table)
        if self._txn is not None:
            self._txn.table = table

    def _start_producer(self, table: str) -> None:
        if self._txn is not None and self._txn.started:
            raise DestinationError("cannot switch producers inside an open transaction")
        self._producer = None
        self._producer_table = None
        config = self._client_config(producer=True)
        config["transactional.id"] = self._transactional_id(table)
        config["error_cb"] = self._on_client_error
        try:
            producer = Producer(config)
        except KafkaException as exc:
            raise ConfigError(self._redact(f"invalid Kafka producer settings: {exc}")) from exc
        try:
            producer.init_transactions(self.timeout)
        except KafkaException as exc:
            raise self._failure(
                f"starting transactional producer {config['transactional.id']!r}", exc
            ) from exc
        self._producer = producer
        self._producer_table = table

    def _on_client_error(self, error: KafkaError) -> None:
        if error.fatal():
            log.error("Kafka producer fatal error: %s", self._redact(error.str()))
        else:
            log.debug("Kafka client error: %s", self._redact(error.str()))

    def _rebuild_mirror(self, table: str) -> None:
        """Read the state topic from the beginning, keeping ``table``'s records."""
        mirror = _Mirror()
        partitions = self._partitions(self.state_topic)
        if partitions is None:
            self._create_topic(self.state_topic, 1, {"cleanup.policy": "compact"})
            partitions = [0]
        started = time.monotonic()
        count = 0
        for message in self._read(
            self.state_topic, dict.fromkeys(partitions, 0), True, _STATE_READ_SECONDS
        ):
            key = _state_key(message.key())
            if key is None or key[3] != table:
                continue
            if key[0] == "" and key[2] != self.connection_name:
                continue  # another connection's index of the same table
            raw = message.value()
            mirror.apply(key, None if raw is None else json.loads(raw))
            count += 1
        self._mirror = mirror
        self._mirror_table = table
        self._dirty = {}
        log.debug(
            "Read %d state records of %s from %s in %.2f s",
            count,
            table,
            self.state_topic,
            time.monotonic() - started,
        )

    @property
    def producer(self) -> Producer:
        assert self._producer is not None
        return self._producer

    # -- tables --------------------------------------------------------------------------

    def prepare_table(
        self, table: str, schema: pa.Schema, mode: LoadMode, block_column: str
    ) -> None:
        if mode is LoadMode.OVERWRITE:
            raise ConfigError(
                "mode='overwrite' is not possible on Kafka: a topic is an append-only log "
                "whose messages cannot be replaced. Load with mode='append' (each row is an "
                "upsert by key, so a compacted topic keeps one message per row), or delete "
                "and recreate the topic first"
            )
        if block_column not in schema.names:
            raise ConfigError(f"the rows of {table} have no block column {block_column!r}")
        if self.key_column is not None and self.key_column not in schema.names:
            raise ConfigError(
                f"kafka config['key_column'] is {self.key_column!r}, but the rows of {table} "
                f"have no such column; columns: {', '.join(schema.names)}"
            )
        if self._txn is not None:
            raise DestinationError("prepare_table() inside an open transaction")
        topic = self.topic_for(table)
        partitions = self._partitions(topic)
        if partitions is None:
            self._create_topic(topic, self.partitions, {})
            partitions = self._partitions(topic) or list(range(self.partitions))
        self._use_table(table)
        self._prepared[table] = _Prepared(topic, block_column, partitions)
        self._scan_for_uncommitted(table, topic, partitions)

    def _scan_key(self, table: str, topic: str) -> StateKey:
        return ("", "scan", self.connection_name, table, topic)

    def _scan_for_uncommitted(self, table: str, topic: str, partitions: list[int]) -> None:
        """Find this writer's messages after its last committed position that no
        committed index entry accounts for: rows of a transaction that was aborted (a
        producer killed mid-transaction). They become dirty keys, retracted by the
        next transaction that covers their blocks."""
        writer = self._transactional_id(table).encode()
        recorded = self._mirror.get(self._scan_key(table, topic))
        ends = self._high_watermarks(topic, partitions)
        if recorded is None:  # first use: nothing of ours before the end offsets now
            self._commit_scan_position(table, topic, ends)
            return
        offsets = recorded.get("offsets", {})
        start = {}
        for partition in partitions:
            begin = int(offsets.get(str(partition), 0))
            start[partition] = begin if begin <= ends.get(partition, 0) else 0
        candidates: dict[str, tuple[int, str]] = {}
        for message in self._read(topic, start, False, _STATE_READ_SECONDS):
            headers = dict(message.headers() or [])
            if headers.get("amp-writer") != writer:
                continue
            key = message.key().decode()
            if message.value() is None:
                candidates.pop(key, None)
            elif "amp-block" in headers:
                candidates[key] = (int(headers["amp-block"]), topic)
        committed: dict[int, set[str]] = {}
        for key, (block, key_topic) in candidates.items():
            if block not in committed:
                committed[block] = {k for t, k, _ in self._committed_keys(table, block)}
            if key not in committed[block]:
                self._dirty.setdefault(block, {})[key] = key_topic
        if self._dirty:
            log.info(
                "Found %d uncommitted messages of %s in topic %s (a transaction aborted by "
                "a crash); they are retracted with the next write of their blocks",
                sum(len(keys) for keys in self._dirty.values()),
                table,
                topic,
            )
        else:
            self._commit_scan_position(table, topic, ends)

    def _commit_scan_position(self, table: str, topic: str, ends: Mapping[int, int]) -> None:
        self.begin()
        try:
            self._txn_for(table).staged[self._scan_key(table, topic)] = {
                "offsets": {str(p): o for p, o in ends.items()}
            }
            self.commit()
        except BaseException:
            self.rollback()
            raise

    # -- the index of published keys -------------------------------------------------------

    def _index_key(self, table: str, block: int) -> StateKey:
        return ("", "index", self.connection_name, table, block)

    def _committed_keys(self, table: str, block: int) -> list[tuple[str, str, str]]:
        """(topic, key, network) of every row the committed index lists for ``block``."""
        entry = self._mirror.get(self._index_key(table, block))
        if entry is None:
            return []
        topic, network = entry["topic"], entry.get("network", "")
        if "keys" in entry:
            return [(topic, key, network) for key in entry["keys"]]
        return [
            (topic, _row_id(table, network, block, position), network)
            for position in range(int(entry["count"]))
        ]

    def _known_blocks(self, table: str, start: int, end: int) -> list[int]:
        blocks = self._mirror.index_blocks
        known = set(blocks[bisect.bisect_left(blocks, start) : bisect.bisect_right(blocks, end)])
        known.update(b for b in self._dirty if start <= b <= end)
        if self._txn is not None:
            known.update(b for b in self._txn.written if start <= b <= end)
        return sorted(known)

    # -- transactions --------------------------------------------------------------------

    def begin(self) -> None:
        if self._txn is not None:
            raise DestinationError("begin() while a Kafka transaction is open")
        self._txn = _Txn()

    def _txn_for(self, table: str | None) -> _Txn:
        if self._txn is None:
            raise DestinationError("write outside begin()/commit()")
        if table is not None:
            self._use_table(table)
        return self._txn

    def _start_broker_txn(self, txn: _Txn) -> None:
        if txn.started:
            return
        if self._producer is None:
            assert txn.table is not None
            self._start_producer(txn.table)
        try:
            self.producer.begin_transaction()
        except KafkaException as exc:
            raise self._failure("beginning a transaction", exc) from exc
        txn.started = True

    def _produce(
        self,
        topic: str,
        key: str,
        value: bytes | str | None,
        headers: list[tuple[str, str]] | None = None,
        partition: int | None = None,
    ) -> None:
        producer = self.producer
        while True:
            try:
                producer.produce(
                    topic,
                    value=value,
                    key=key,
                    headers=headers,
                    partition=-1 if partition is None else partition,  # -1: the partitioner's
                )
                return
            except BufferError:  # the local queue is full: let it drain
                producer.poll(0.05)
            except KafkaException as exc:
                raise self._failure(f"producing to {topic!r}", exc) from exc

    def write(
        self, table: str, batch: pa.RecordBatch, block_range: BlockRange | None = None
    ) -> int:
        """Produce one message per row inside the open transaction."""
        txn = self._txn_for(table)
        prepared = self._prepared.get(table)
        if prepared is None:
            raise DestinationError(f"prepare_table({table!r}, ...) must come before write()")
        if batch.num_rows == 0:
            return 0
        self._start_broker_txn(txn)
        values = json_values(batch) if self.value_format == "json" else arrow_values(batch)
        blocks = batch.column(prepared.block_column).to_pylist()
        keys_in = batch.column(self.key_column).to_pylist() if self.key_column is not None else None
        network = block_range.network if block_range is not None else ""
        if block_range is not None and (block_range.start, block_range.end) not in txn.covered:
            txn.covered.append((block_range.start, block_range.end))
        common: list[tuple[str, str]] = [("_amp_op", "upsert")]
        if block_range is not None:
            common += [
                ("amp-network", block_range.network),
                ("amp-block-range", f"{block_range.start}-{block_range.end}"),
            ]
            if block_range.hash:
                common.append(("amp-block-hash", block_range.hash))
        common.append(("amp-writer", self._transactional_id(table)))
        headers_by_block: dict[int, list[tuple[str, str]]] = {}
        topic = prepared.topic
        for row, (block, value) in enumerate(zip(blocks, values, strict=True)):
            if block is None:
                raise ConfigError(f"a row of {table} has a null {prepared.block_column}")
            written = txn.written.get(block)
            if written is None:
                written = txn.written[block] = _Written(
                    topic, network, keys=[] if keys_in is not None else None
                )
            if keys_in is not None:
                if keys_in[row] is None:
                    raise ConfigError(
                        f"key_column {self.key_column!r} is null in a row of {table} (block "
                        f"{block}); a Kafka key column must never be null"
                    )
                key = _key_text(keys_in[row])
                assert written.keys is not None
                written.keys.append(key)
            else:
                key = _row_id(table, network, block, written.count)
            written.count += 1
            headers = headers_by_block.get(block)
            if headers is None:
                headers = headers_by_block[block] = [*common, ("amp-block", str(block))]
            self._produce(topic, key, value, headers)
        txn.produced += batch.num_rows
        return batch.num_rows

    def delete_blocks(self, table: str, block_column: str, start: int, end: int) -> int:
        """Retract every key published for blocks ``start..end``: one tombstone each
        (``_amp_op: delete``), inside the open transaction; returns how many."""
        txn = self._txn_for(table)
        retracted = 0
        for block in self._known_blocks(table, start, end):
            doomed = self._known_keys(table, block) if block not in txn.retracted else {}
            written = txn.written.pop(block, None)
            if written is not None:
                for key in _written_keys(table, block, written):
                    doomed.setdefault((written.topic, key), written.network)
            txn.retracted.add(block)
            retracted += self._retract(txn, table, block, doomed, f"{start}-{end}")
        return retracted

    def _known_keys(self, table: str, block: int) -> dict[tuple[str, str], str]:
        """(topic, key) → network of every key ``block`` may show: committed or dirty."""
        known = {
            (topic, key): network for topic, key, network in self._committed_keys(table, block)
        }
        for key, topic in self._dirty.get(block, {}).items():
            known.setdefault((topic, key), "")
        return known

    def _retract(
        self,
        txn: _Txn,
        table: str,
        block: int,
        doomed: Mapping[tuple[str, str], str],
        span: str | None = None,
    ) -> int:
        """Produce a tombstone for each of ``doomed`` (a block's keys); returns how many."""
        if not doomed:
            return 0
        self._start_broker_txn(txn)
        writer = self._transactional_id(table)
        for (topic, key), network in doomed.items():
            headers = [("_amp_op", "delete"), ("amp-block", str(block))]
            if network:
                headers.append(("amp-network", network))
            if span is not None:
                headers.append(("amp-block-range", span))
            headers.append(("amp-writer", writer))
            self._produce(topic, key, None, headers)
        txn.produced += len(doomed)
        return len(doomed)

    def commit(self) -> None:
        txn = self._txn
        if txn is None:
            raise DestinationError("commit() without begin()")
        if txn.empty:
            self._txn = None
            return
        try:
            changes = self._finish_index(txn)
            self._start_broker_txn(txn)
            # The rows first: once a state record is visible, so are the rows it describes
            # (even where aborted transactions show).
            remaining = self.producer.flush(self.timeout)
            if remaining:
                raise KafkaException(
                    KafkaError(
                        KafkaError._TIMED_OUT,
                        f"{remaining} messages not delivered within {self.timeout:g} s",
                        retriable=True,
                    )
                )
            for key, value in (*changes.items(), *txn.staged.items()):
                encoded = None if value is None else json.dumps(value)
                self._produce(self.state_topic, json.dumps(list(key)), encoded, partition=0)
            self.producer.commit_transaction(self.timeout)
        except KafkaException as exc:
            self.rollback()
            raise self._failure("committing a transaction", exc) from exc
        except BaseException:
            self.rollback()
            raise
        self._txn = None
        for key, value in (*changes.items(), *txn.staged.items()):
            self._mirror.apply(key, value)
        for block in (*txn.written, *txn.retracted):
            self._dirty.pop(block, None)

    def _finish_index(self, txn: _Txn) -> dict[StateKey, Any]:
        """Before commit: retract what the transaction's writes leave stale (keys a
        rewritten block no longer has, every key of a block its block ranges cover but
        that has no rows now, dirty keys not written again); then the index records."""
        table = txn.table
        changes: dict[StateKey, Any] = {}
        if table is None:
            return changes
        for start, end in txn.covered:
            for block in self._known_blocks(table, start, end):
                if block not in txn.written and block not in txn.retracted:
                    self._retract(txn, table, block, self._known_keys(table, block))
                    txn.retracted.add(block)
        for block, written in txn.written.items():
            if block in txn.retracted:
                continue
            fresh = set(_written_keys(table, block, written))
            stale = {
                (topic, key): network
                for (topic, key), network in self._known_keys(table, block).items()
                if topic != written.topic or key not in fresh
            }
            self._retract(txn, table, block, stale)
        if not (txn.written or txn.retracted):
            return changes
        for block in txn.retracted:
            if block not in txn.written:
                changes[self._index_key(table, block)] = None
        top = max(txn.written, default=None)
        for block, written in txn.written.items():
            entry: dict[str, Any] = {"topic": written.topic, "network": written.network}
            if written.keys is not None:
                entry["keys"] = written.keys
            else:
                entry["count"] = written.count
            changes[self._index_key(table, block)] = entry
        if top is not None:
            floor = top - self.window
            for block in self._mirror.index_blocks:
                if block >= floor:
                    break
                if block not in txn.written:
                    changes[self._index_key(table, block)] = None
        remaining_dirty = set(self._dirty) - set(txn.written) - txn.retracted
        prepared = self._prepared.get(table)
        now = time.monotonic()
        if (
            prepared is not None
            and not remaining_dirty
            and txn.written
            and now - self._last_scan_advance >= _SCAN_EVERY_SECONDS
        ):
            self._last_scan_advance = now
            self._start_broker_txn(txn)
            remaining = self.producer.flush(self.timeout)
            if remaining == 0:  # all our rows are below the end offsets read now
                ends = self._high_watermarks(prepared.topic, prepared.partitions)
                changes[self._scan_key(table, prepared.topic)] = {
                    "offsets": {str(p): o for p, o in ends.items()}
                }
        return changes

    def rollback(self) -> None:
        """Abort the open transaction (never raises); its keys become dirty: a broker or
        consumer that shows aborted messages would show them."""
        txn = self._txn
        self._txn = None
        if txn is None or not txn.started:
            return
        table = txn.table
        if table is not None and table == self._mirror_table:
            for block, written in txn.written.items():
                dirty = self._dirty.setdefault(block, {})
                for key in _written_keys(table, block, written):
                    dirty[key] = written.topic
        producer = self._producer
        if producer is None:
            return
        try:
            producer.abort_transaction(self.timeout)
        except Exception as exc:  # a producer that cannot abort is replaced
            log.warning(
                "Aborting the Kafka transaction failed (%s); the producer will be "
                "restarted, which aborts it on the broker",
                self._redact(str(exc)),
            )
            self._producer = None
            self._producer_table = None

    def state_store(self, prefix: str) -> KafkaStateStore:
        return KafkaStateStore(self, prefix)

    # -- state records (for KafkaStateStore) ---------------------------------------------

    def _state_get(self, table: str, key: StateKey) -> Any:
        self._use_table(table)
        if self._txn is not None and key in self._txn.staged:
            return self._txn.staged[key]
        return self._mirror.get(key)

    def _state_items(self, table: str, kind: str) -> dict[StateKey, Any]:
        self._use_table(table)
        items = dict(self._mirror.kinds.get(kind, {}))
        if self._txn is not None:
            for key, value in self._txn.staged.items():
                if key[1] != kind:
                    continue
                if value is None:
                    items.pop(key, None)
                else:
                    items[key] = value
        return items

    def _state_put(self, table: str, records: Mapping[StateKey, Any]) -> None:
        """Stage ``records`` in the open transaction, or commit them in their own."""
        if not records:
            return
        if self._txn is not None:
            txn = self._txn_for(table)
            for key, value in records.items():
                txn.staged.pop(key, None)  # keep the order of the latest writes
                txn.staged[key] = value
            return
        self.begin()
        try:
            self._state_put(table, records)
            self.commit()
        except BaseException:
            self.rollback()
            raise


def _row_id(table: str, network: str, block: int, position: int) -> str:
    return f"{table}:{network}:{block}:{position}"


def _written_keys(table: str, block: int, written: _Written) -> list[str]:
    if written.keys is not None:
        return written.keys
    return [_row_id(table, written.network, block, p) for p in range(written.count)]


def _check_topic_name(where: str, key: str, name: str) -> None:
    if not _TOPIC_NAME.match(name) or name in (".", ".."):
        raise ConfigError(
            f"{where}[{key!r}] = {name!r} is not a valid Kafka topic name: use 1-249 "
            "characters among letters, digits, '.', '_' and '-'"
        )


class KafkaStateStore:
    """Checkpoints and processed ranges as records of the state topic (see the module
    docstring for the layout), read from the loader's mirror and written in its open
    producer transaction (or a transaction of their own)."""

    def __init__(self, loader: KafkaLoader, prefix: str) -> None:
        self.loader = loader
        self.prefix = prefix

    def create_checkpoint_tables(self) -> None:
        """The state topic is created when the loader connects."""

    def create_processed_ranges_table(self) -> None:
        """The state topic is created when the loader connects."""

    def _checkpoint_key(self, connection: str, table: str, worker_id: int) -> StateKey:
        return (self.prefix, "checkpoint", connection, table, worker_id)

    def load_checkpoint(self, connection: str, table: str, worker_id: int) -> dict[str, Any] | None:
        value = self.loader._state_get(table, self._checkpoint_key(connection, table, worker_id))
        return dict(value) if value is not None else None

    def save_checkpoint(
        self,
        connection: str,
        table: str,
        worker_id: int,
        data: dict[str, Any],
        timestamp: datetime,
        archive_previous: bool = False,
    ) -> None:
        key = self._checkpoint_key(connection, table, worker_id)
        records: dict[StateKey, Any] = {}
        if archive_previous:
            previous = self.loader._state_get(table, key)
            if previous is not None:
                history = (
                    self.prefix,
                    "checkpoint_history",
                    connection,
                    table,
                    worker_id,
                    timestamp.isoformat(),
                )
                records[history] = {"checkpoint": previous, "archived_at": timestamp.isoformat()}
        records[key] = data
        self.loader._state_put(table, records)

    def delete_checkpoint(self, connection: str, table: str, worker_id: int | None = None) -> int:
        doomed = {
            key: None
            for key in self.loader._state_items(table, "checkpoint")
            if key[0] == self.prefix
            and key[2] == connection
            and (worker_id is None or key[4] == worker_id)
        }
        self.loader._state_put(table, doomed)
        return len(doomed)

    def _ranges(self, connection: str, table: str) -> dict[StateKey, Any]:
        return {
            key: value
            for key, value in self.loader._state_items(table, "processed").items()
            if key[0] == self.prefix and key[2] == connection
        }

    def overlapping_ranges(
        self, connection: str, table: str, block_range: BlockRange
    ) -> list[ProcessedRange]:
        found = []
        for record in self._ranges(connection, table).values():
            if (
                record["network"] == block_range.network
                and record["end"] >= block_range.start
                and record["start"] <= block_range.end
            ):
                found.append(ProcessedRange.from_record(record))
        return found

    def mark_processed(
        self,
        connection: str,
        table: str,
        block_range: BlockRange,
        processed_at: datetime,
        batch_hash: str | None,
    ) -> None:
        key = (
            self.prefix,
            "processed",
            connection,
            table,
            block_range.network,
            block_range.start,
            block_range.end,
            block_range.hash or "",
        )
        record = ProcessedRange.record(block_range, processed_at, batch_hash)
        self.loader._state_put(table, {key: record})

    def _forget(self, connection: str, table: str, doomed: Callable[[dict[str, Any]], bool]) -> int:
        records = {
            key: None for key, value in self._ranges(connection, table).items() if doomed(value)
        }
        self.loader._state_put(table, records)
        return len(records)

    def forget_ranges_from(self, connection: str, table: str, network: str, start: int) -> int:
        return self._forget(
            connection, table, lambda r: r["network"] == network and r["end"] >= start
        )

    def forget_ranges(self, connection: str, table: str) -> int:
        return self._forget(connection, table, lambda r: True)

    def cleanup_old_ranges(self, connection: str, table: str, days: float) -> int:
        cutoff = datetime.now(UTC) - timedelta(days=days)
        return self._forget(
            connection, table, lambda r: datetime.fromisoformat(r["processed_at"]) < cutoff
        )
