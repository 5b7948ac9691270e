"""The ``DocumentBackend`` of the Delta loader: state documents read from the table's
commits (``amp.loaders.delta.state``) and staged in the loader's open transaction, so
that ``DocumentStateStore`` keeps its rules in one place for Redis, Kafka and Delta."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from amp.loaders.delta.state import TableState, app_id
from amp.streaming.state_documents import CHECKPOINT, DocKey, Document

if TYPE_CHECKING:
    from amp.loaders.delta.loader import DeltaLakeLoader


class DeltaDocuments:
    """Committed documents: the table's commits, read once and then incrementally
    (new commits only) each time a transaction first looks at the table."""

    def __init__(self, loader: DeltaLakeLoader) -> None:
        self.loader = loader

    def _state(self, table: str) -> TableState | None:
        if self.loader.fresh_table(table) is None:
            return None
        return self.loader.state_of(table)

    def _txn_version(self, table: str, key: DocKey) -> int | None:
        delta = self.loader.table(table, refresh=False)
        return None if delta is None else delta.transaction_version(app_id(key))

    def committed_document(self, table: str, key: DocKey) -> Document | None:
        state = self._state(table)
        if state is None:
            return None
        if key[1] == CHECKPOINT:
            return state.checkpoint(key, self._txn_version(table, key))
        return state.documents.get(key)

    def committed_documents(
        self, table: str, prefix: str, kind: str, connection: str, min_end: int | None = None
    ) -> dict[DocKey, Document]:
        return self._documents(table, prefix, kind, connection)

    def _documents(
        self, table: str, prefix: str, kind: str, connection: str | None
    ) -> dict[DocKey, Document]:
        state = self._state(table)
        if state is None:
            return {}
        found: dict[DocKey, Document] = {}
        if kind == CHECKPOINT:
            for key in state.checkpoints:
                if key[0] == prefix and key[3] == table and connection in (None, key[2]):
                    document = state.checkpoint(key, self._txn_version(table, key))
                    if document is not None:
                        found[key] = document
            return found
        for key, document in state.documents.items():
            if key[:2] == (prefix, kind) and key[3] == table and connection in (None, key[2]):
                found[key] = document
        return found

    def listed_documents(
        self, prefix: str, kind: str, connection: str | None, table: str | None
    ) -> dict[DocKey, Document]:
        found: dict[DocKey, Document] = {}
        for name in [table] if table is not None else self.loader.table_names():
            found.update(self._documents(name, prefix, kind, connection))
        return found

    def staged_documents(self, table: str) -> dict[DocKey, Document | None] | None:
        return self.loader.staged_documents

    def apply_documents(self, table: str, changes: Mapping[DocKey, Document | None]) -> None:
        """Outside a transaction: one commit of its own holding ``changes``."""
        self.loader.begin()
        try:
            staged = self.loader.staged_documents
            assert staged is not None
            staged.update(changes)
            self.loader.commit()
        except BaseException:
            self.loader.rollback()
            raise
