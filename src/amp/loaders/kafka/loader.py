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

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import pyarrow as pa
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient

from amp.errors import ConfigError, DestinationError, StreamOwnedError
from amp.loaders.base import LoadMode
from amp.loaders.kafka.cluster import KafkaCluster
from amp.loaders.kafka.retractions import KeyLedger
from amp.loaders.kafka.state import StateRecords, _Mirror
from amp.loaders.kafka.transaction import (
    Headers,
    _Prepared,
    _row_id,
    _Txn,
    _Written,
    _written_keys,
)
from amp.loaders.kafka.values import _key_text, arrow_values, json_values
from amp.loaders.kafka_fencing import is_fenced, taken_over
from amp.loaders.ownership import Stream
from amp.streaming.state_documents import DocumentStateStore
from amp.streaming.types import BlockRange

log = logging.getLogger("amp.loaders.kafka")


class KafkaLoader(KeyLedger, StateRecords, KafkaCluster):
    """Loads into Kafka topics. Keys: bootstrap_servers, topic, compression, acks,
    client_id, value_format ('json' or 'arrow'), key_column, state_topic,
    producer_config, partitions, replication_factor, timeout,
    retraction_window_blocks, dead_peer_timeout."""

    transactional = True
    supports_overwrite = False

    def __init__(self, config: Mapping[str, Any], connection_name: str = "") -> None:
        super().__init__(config, connection_name)
        self._admin: AdminClient | None = None
        self._producer: Producer | None = None
        self._producer_table: str | None = None
        self._producer_id: str | None = None  # its transactional.id
        self._mirror_table: str | None = None
        self._mirror = _Mirror()
        self._dirty: dict[int, dict[str, str]] = {}  # block → key → topic
        self._txn: _Txn | None = None
        self._prepared: dict[str, _Prepared] = {}
        self._last_scan_advance = 0.0

    def close(self) -> None:
        self.rollback()
        self._producer = None
        self._producer_table = self._producer_id = None
        self._mirror_table = None
        self._mirror = _Mirror()
        self._dirty = {}
        self._prepared.clear()
        self._admin = None

    # -- the producer and the mirror of one table ---------------------------------------

    def _use_table(self, table: str) -> None:
        """Make ``table`` the current one: its producer (fencing any zombie with its
        ``transactional.id``), then its state mirror, read after the fence."""
        if self._txn is not None and self._txn.table not in (None, table):
            raise DestinationError(
                f"one Kafka transaction cannot span tables {self._txn.table!r} and {table!r}"
            )
        # A loader that moves to another worker's stream (a parallel load's thread taking
        # its next partition) needs that worker's producer: the id names the worker.
        if self._producer is None or self._producer_id != self._transactional_id(table):
            self._start_producer(table)
        if self._mirror_table != table:
            self._rebuild_mirror(table)
        if self._txn is not None:
            self._txn.table = table

    def reload_state(self, table: str) -> None:
        """Rebuild the mirror from the state topic: other writers' index records (the
        keys they published) become known, so their rows can be retracted. The keys
        this loader found dirty stay dirty (the topic does not list them)."""
        if self._txn is not None:
            raise DestinationError("reload_state() inside an open transaction")
        dirty = self._dirty
        self._use_table(table)
        self._rebuild_mirror(table)
        self._dirty = dirty

    def _start_producer(self, table: str) -> None:
        if self._txn is not None and self._txn.started:
            raise DestinationError("cannot switch producers inside an open transaction")
        self._producer = None
        self._producer_table = self._producer_id = None
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
        self._producer_id = config["transactional.id"]

    def end_stale_writes(self, table: str) -> None:
        """Fence each of this connection's writers of ``table`` (``amp-{connection}-
        {table}-{worker}``) that has a transaction open on the state topic or the table's
        topic, which aborts it. A parallel load calls this before its workers start: a
        killed process's worker whose partition is done never starts its producer again,
        and its open transaction would hold every ``read_committed`` read of the topic
        back (until the broker's transaction timeout, or for ever on some brokers)."""
        self.ensure_connected()
        started = time.monotonic()
        prefix = f"amp-{self.connection_name}-{table}-"
        writers: set[str] = set()
        for topic in (self.state_topic, self.topic_for(table)):
            writers |= self._open_writers(topic)
        stale = [w for w in sorted(writers) if w.startswith(prefix) and w[len(prefix) :].isdigit()]
        for writer in stale:
            self._fence(writer)
        log.info(
            "Looked for open transactions of %s's writers in %.2f s; aborted %d",
            table,
            time.monotonic() - started,
            len(stale),
        )

    def _fence(self, writer: str) -> None:
        """Start a producer with transactional id ``writer`` (aborting its open
        transaction), then let it go; this loader's own producer of that id is replaced."""
        if self._txn is not None and self._txn.started:
            raise DestinationError("cannot fence writers inside an open transaction")
        if writer == self._producer_id:
            self._producer = None
            self._producer_table = self._producer_id = None
        config = self._client_config(producer=True)
        config["transactional.id"] = writer
        try:
            Producer(config).init_transactions(self.timeout)
        except KafkaException as exc:
            raise self._failure(f"ending the open transaction of {writer!r}", exc) from exc
        log.info("Aborted the transaction a stopped load left open (writer %s)", writer)

    def _on_client_error(self, error: KafkaError) -> None:
        if error.fatal():
            log.error("Kafka producer fatal error: %s", self._redact(error.str()))
        else:
            log.debug("Kafka client error: %s", self._redact(error.str()))

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
        headers: Headers | None = None,
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
        common: Headers = [("_amp_op", "upsert")]
        if block_range is not None:
            common += [
                ("amp-network", block_range.network),
                ("amp-block-range", f"{block_range.start}-{block_range.end}"),
            ]
            if block_range.hash:
                common.append(("amp-block-hash", block_range.hash))
        common.append(("amp-writer", self._transactional_id(table)))
        headers_by_block: dict[int, Headers] = {}
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
            # The writer is named on state records too: a transaction that wrote no rows
            # can still be left open by a killed process (see end_stale_writes).
            writer: Headers = [("amp-writer", self._producer_id or "")]
            for key, value in (*changes.items(), *txn.staged.items()):
                encoded = None if value is None else json.dumps(value)
                self._produce(self.state_topic, json.dumps(list(key)), encoded, writer, partition=0)
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
            self._producer_table = self._producer_id = None

    def state_store(self, prefix: str) -> DocumentStateStore:
        """Checkpoints and processed ranges as records of the state topic."""
        return DocumentStateStore(self, prefix)

    # -- one writer per stream --------------------------------------------------------

    def claim_stream(self, table: str, worker_id: int) -> None:
        """Nothing to lock: the producer's transactional.id fences any older producer of
        the stream (see ``amp.loaders.kafka_fencing``); the worker is kept for messages."""
        self._workers[table] = worker_id

    def release_stream(self) -> None:
        self._workers.clear()

    def _failure(self, what: str, exc: BaseException) -> DestinationError | StreamOwnedError:
        """A StreamOwnedError when a newer producer of the stream fenced ours."""
        if is_fenced(exc):
            return self._taken_over(exc)
        return super()._failure(what, exc)

    def _taken_over(self, exc: BaseException) -> StreamOwnedError:
        # (a rollback may have dropped the fenced producer: the mirror's table remains)
        table = self._producer_table or self._mirror_table or next(iter(self._workers), "?")
        stream = Stream(self.connection_name, table, self._workers.get(table, 0))
        owned = taken_over(stream, self.describe(), self._transactional_id(table))
        owned.__cause__ = exc
        return owned
