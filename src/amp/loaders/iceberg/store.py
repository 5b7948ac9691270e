"""The ``DocumentBackend`` of the Iceberg loader: state documents read from the table's
metadata (properties and snapshot summaries, see ``amp.loaders.iceberg.state``) and
staged in the loader's open unit, which commits them with the rows.

Reads use the table as the loader last loaded it: refreshed before each commit, after
it, at ``reload_state`` and at ``prepare_table``. A stream has one writer (its claim),
so what it reads of its own state is never older than its own last commit.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING

from amp.loaders.iceberg.errors import failure
from amp.loaders.iceberg.state import (
    checkpoints_in,
    data_table,
    is_plan,
    property_name,
)
from amp.streaming.state_documents import CHECKPOINT, PROCESSED, DocKey, Document

if TYPE_CHECKING:
    from amp.loaders.iceberg.loader import IcebergLoader


class IcebergDocuments:
    def __init__(self, loader: IcebergLoader) -> None:
        self.loader = loader

    # -- where documents are -------------------------------------------------------------

    def _namespace_properties(self) -> Mapping[str, str]:
        loader = self.loader
        try:
            return loader.catalog.load_namespace_properties(loader.settings.namespace)
        except Exception as exc:
            raise failure("reading the namespace's properties", exc) from exc

    def _documents(
        self, state_table: str, kind: str, latest: bool = False
    ) -> dict[DocKey, Document]:
        """The committed documents of ``kind`` kept for ``state_table`` (as the table
        was last loaded, or with ``latest`` as the catalog has it now)."""
        if is_plan(state_table):
            if kind != CHECKPOINT:
                return {}
            return checkpoints_in(self._namespace_properties())
        table = self.loader.table(data_table(state_table), refresh=latest)
        if table is None:
            return {}
        if kind == CHECKPOINT:
            return checkpoints_in(table.properties)
        return self.loader.summary_log(data_table(state_table)).documents(table, kind)

    # -- DocumentBackend -----------------------------------------------------------------

    def committed_document(self, table: str, key: DocKey) -> Document | None:
        return self._documents(table, key[1]).get(key)

    def committed_documents(
        self, table: str, prefix: str, kind: str, connection: str, min_end: int | None = None
    ) -> dict[DocKey, Document]:
        return {
            key: document
            for key, document in self._documents(table, kind).items()
            if key[0] == prefix
            and key[2] == connection
            and key[3] == table
            and (min_end is None or kind != PROCESSED or document["end"] >= min_end)
        }

    def listed_documents(
        self, prefix: str, kind: str, connection: str | None, table: str | None
    ) -> dict[DocKey, Document]:
        """Of ``table`` (or of every table of the namespace, and the plans), as the
        catalog has them now: what an operator lists, other writers' included."""
        if table is not None:
            names = [table]
        else:
            loader = self.loader
            try:
                identifiers = loader.catalog.list_tables(loader.settings.namespace)
            except Exception as exc:
                raise failure("listing the namespace's tables", exc) from exc
            names = [identifier[-1] for identifier in identifiers]
            names.append("/parallel-plan")  # every plan: the namespace's properties
        found: dict[DocKey, Document] = {}
        for name in names:
            for key, document in self._documents(name, kind, latest=True).items():
                if key[0] != prefix or (connection is not None and key[2] != connection):
                    continue
                if table is not None and key[3] != table:
                    continue
                found[key] = document
        return found

    def staged_documents(self, table: str) -> dict[DocKey, Document | None] | None:
        return self.loader.staged(table)

    def apply_documents(self, table: str, changes: Mapping[DocKey, Document | None]) -> None:
        """Outside a transaction: a commit of their own."""
        loader = self.loader
        loader.begin()
        try:
            staged = loader.staged(table)
            assert staged is not None
            staged.update(changes)
            loader.commit()
        except BaseException:
            loader.rollback()
            raise

    def write_namespace(self, changes: Mapping[DocKey, Document | None]) -> None:
        """Plans: set or remove the namespace's properties (one catalog call)."""
        loader = self.loader
        updates = {
            property_name(key): json.dumps(document, separators=(",", ":"))
            for key, document in changes.items()
            if document is not None and key[1] == CHECKPOINT
        }
        present = loader.catalog.load_namespace_properties(loader.settings.namespace)
        removals = {
            property_name(key)
            for key, document in changes.items()
            if document is None and property_name(key) in present
        }
        try:
            loader.catalog.update_namespace_properties(
                loader.settings.namespace, removals=removals, updates=updates
            )
        except Exception as exc:
            raise failure("writing the namespace's properties", exc) from exc
