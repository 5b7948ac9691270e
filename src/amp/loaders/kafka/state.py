"""The Kafka state topic: checkpoints, processed ranges and the key ledger as keyed JSON
records, mirrored in memory per table, staged in the open producer transaction."""

from __future__ import annotations

import bisect
import json
import logging
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from amp.loaders.kafka.cluster import _STATE_READ_SECONDS, KafkaCluster
from amp.loaders.kafka.transaction import StateKey, _Txn
from amp.streaming.state_documents import DocKey, Document

log = logging.getLogger("amp.loaders.kafka")


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


class StateRecords(KafkaCluster):
    """Mixin of KafkaLoader: the mirror of the state topic, and the ``DocumentBackend``
    of its ``DocumentStateStore`` (checkpoints and processed ranges are state records
    under their document keys, staged in the open producer transaction).

    It builds on the cluster (KafkaCluster comes after it in KafkaLoader's MRO, as
    before); the loader's state and methods it uses are declared below so that a type
    checker holds KafkaLoader to them. Declarations only: nothing here exists at run
    time, so the loader's own definitions are the only ones."""

    _mirror: _Mirror
    _mirror_table: str | None
    _dirty: dict[int, dict[str, str]]  # block → key → topic: keys to retract
    _txn: _Txn | None

    if TYPE_CHECKING:

        def _use_table(self, table: str) -> None: ...

        def _txn_for(self, table: str | None) -> _Txn: ...

        def ensure_connected(self) -> None: ...

    def _state_records(self) -> Iterator[tuple[StateKey, Any]]:
        """The committed records of the state topic from its beginning, in order (a
        ``None`` value is a tombstone); creates the topic when missing."""
        partitions = self._partitions(self.state_topic)
        if partitions is None:
            self._create_topic(self.state_topic, 1, {"cleanup.policy": "compact"})
            partitions = [0]
        for message in self._read(
            self.state_topic, dict.fromkeys(partitions, 0), True, _STATE_READ_SECONDS
        ):
            key = _state_key(message.key())
            if key is not None:
                raw = message.value()
                yield key, None if raw is None else json.loads(raw)

    def _rebuild_mirror(self, table: str) -> None:
        """Read the state topic from the beginning, keeping ``table``'s records."""
        mirror = _Mirror()
        started = time.monotonic()
        count = 0
        for key, value in self._state_records():
            if key[3] != table:
                continue
            if key[0] == "" and key[2] != self.connection_name:
                continue  # another connection's index of the same table
            mirror.apply(key, value)
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

    # -- DocumentBackend ------------------------------------------------------------------

    def committed_document(self, table: str, key: DocKey) -> Document | None:
        self._use_table(table)
        return self._mirror.get(key)

    def committed_documents(
        self, table: str, prefix: str, kind: str, connection: str, min_end: int | None = None
    ) -> dict[DocKey, Document]:
        self._use_table(table)
        return {
            key: value
            for key, value in self._mirror.kinds.get(kind, {}).items()
            if key[0] == prefix and key[2] == connection
        }

    def listed_documents(
        self, prefix: str, kind: str, connection: str | None, table: str | None
    ) -> dict[DocKey, Document]:
        """Read from the state topic itself (the mirror holds one table); no producer is
        started, so listing fences no running load."""
        self.ensure_connected()
        found: dict[DocKey, Document] = {}
        for key, value in self._state_records():
            if key[0] != prefix or key[1] != kind:
                continue
            if (connection is not None and key[2] != connection) or (
                table is not None and key[3] != table
            ):
                continue
            if value is None:
                found.pop(key, None)
            else:
                found[key] = value
        return found

    def staged_documents(self, table: str) -> dict[DocKey, Document | None] | None:
        if self._txn is None:
            return None
        return self._txn_for(table).staged

    def apply_documents(self, table: str, changes: Mapping[DocKey, Document | None]) -> None:
        """Commit ``changes`` in a producer transaction of their own."""
        self.begin()
        try:
            staged = self._txn_for(table).staged
            staged.update(changes)
            self.commit()
        except BaseException:
            self.rollback()
            raise
