"""Retractions: the per-block ledger of published keys (the ``index`` records of the
state topic), the tombstones that retract stale or replaced keys, and the scan for
messages of a transaction that a crash aborted."""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from amp.loaders.kafka.cluster import _STATE_READ_SECONDS
from amp.loaders.kafka.state import StateRecords
from amp.loaders.kafka.transaction import (
    Headers,
    StateKey,
    _Prepared,
    _row_id,
    _Txn,
    _written_keys,
)

if TYPE_CHECKING:
    from confluent_kafka import Producer

log = logging.getLogger("amp.loaders.kafka")

_SCAN_EVERY_SECONDS = 5.0


class KeyLedger(StateRecords):
    """Mixin of KafkaLoader: which keys each block has published, and their retraction.

    The index lives in the state records' mirror, hence the base (StateRecords comes
    after it in KafkaLoader's MRO, as before). The loader's state and methods it uses
    are declared below for the type checker only, as in StateRecords."""

    _prepared: dict[str, _Prepared]
    _last_scan_advance: float

    if TYPE_CHECKING:

        @property
        def producer(self) -> Producer: ...

        def _start_broker_txn(self, txn: _Txn) -> None: ...

        def _produce(
            self,
            topic: str,
            key: str,
            value: bytes | str | None,
            headers: Headers | None = None,
            partition: int | None = None,
        ) -> None: ...

    def _scan_key(self, table: str, topic: str) -> StateKey:
        """Per writer: another worker's scan position says nothing of this writer's
        aborted messages (worker 0 keeps the key of a single load)."""
        key: StateKey = ("", "scan", self.connection_name, table, topic)
        worker = self._workers.get(table, 0)
        return (*key, worker) if worker else key

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
            raw_key, raw_block = message.key(), headers.get("amp-block")
            if headers.get("amp-writer") != writer or raw_key is None:
                continue  # another writer's (every message of ours has a key)
            key = raw_key.decode()
            if message.value() is None:
                candidates.pop(key, None)
            elif raw_block is not None:
                candidates[key] = (int(raw_block), topic)
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
            headers: Headers = [("_amp_op", "delete"), ("amp-block", str(block))]
            if network:
                headers.append(("amp-network", network))
            if span is not None:
                headers.append(("amp-block-range", span))
            headers.append(("amp-writer", writer))
            self._produce(topic, key, None, headers)
        txn.produced += len(doomed)
        return len(doomed)

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
