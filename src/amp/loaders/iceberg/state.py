"""Where the Iceberg loader keeps amp's delivery state: in the table's own commits.

Why there: a microbatch's rows and its checkpoint must become visible together, and an
Iceberg commit (one catalog swap of the table's metadata) is the only atomic step the
table offers. So each unit's commit carries, besides its deletes and appended files:

- the *checkpoints* it writes as **table properties** (``amp.checkpoint:<key>`` → JSON).
  Properties live in every later metadata version, so snapshot expiry never removes a
  checkpoint; a commit sets only its own worker's key, and the catalog applies it to the
  table's latest metadata, so one worker's commit never hides another's checkpoint;
- its *processed ranges* (the idempotency records) and *checkpoint history* as entries of
  the **summary of its snapshot** (``amp.processed``, ``amp.checkpoint-history``, and a copy
  of the checkpoint as ``amp.checkpoint``). They are read back by replaying the summaries
  of the current snapshot's ancestors, oldest first, so they live as long as the
  snapshots that carry them: expiring snapshots is their cleanup (a forgotten range only
  means a replayed microbatch is rewritten instead of skipped: its blocks are deleted
  first, so the table stays exact).

A parallel load's plan (state table ``<table>/parallel-plan``) is stored before the table
exists, so it lives in the **namespace's properties** instead (written on its own; it
needs no atomicity with rows).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from amp.streaming.state_documents import (
    CHECKPOINT,
    CHECKPOINT_HISTORY,
    PROCESSED,
    DocKey,
    Document,
)

if TYPE_CHECKING:
    from pyiceberg.table import Table
    from pyiceberg.table.snapshots import Snapshot

# The state table name of a parallel load's plan (``amp.loop.parallel_plan.PLAN_SUFFIX``;
# loaders sit below the loop and do not import it: tests/iceberg checks they agree).
PLAN_SUFFIX = "/parallel-plan"
PROPERTY_PREFIX = "amp.checkpoint:"
SUMMARY_CHECKPOINT = "amp.checkpoint"
SUMMARY_PROCESSED = "amp.processed"
SUMMARY_HISTORY = "amp.checkpoint-history"

Changes = Mapping[DocKey, Document | None]


def property_name(key: DocKey) -> str:
    """The table (or namespace) property holding checkpoint ``key``."""
    return PROPERTY_PREFIX + json.dumps(list(key), separators=(",", ":"))


def key_of_property(name: str) -> DocKey | None:
    if not name.startswith(PROPERTY_PREFIX):
        return None
    try:
        parts = json.loads(name[len(PROPERTY_PREFIX) :])
    except ValueError:
        return None
    return tuple(parts) if isinstance(parts, list) and len(parts) == 5 else None


def data_table(state_table: str) -> str:
    """The amp table whose commits hold the state of ``state_table``."""
    return state_table[: -len(PLAN_SUFFIX)] if state_table.endswith(PLAN_SUFFIX) else state_table


def is_plan(state_table: str) -> bool:
    return state_table.endswith(PLAN_SUFFIX)


def checkpoints_in(properties: Mapping[str, str]) -> dict[DocKey, Document]:
    """The checkpoint documents among ``properties``."""
    found: dict[DocKey, Document] = {}
    for name, value in properties.items():
        key = key_of_property(name)
        if key is not None and key[1] == CHECKPOINT:
            found[key] = json.loads(value)
    return found


def _entries(raw: str | None) -> list[tuple[DocKey, Document | None]]:
    if not raw:
        return []
    return [(tuple(key), document) for key, document in json.loads(raw)]


def _encode(changes: Iterator[tuple[DocKey, Document | None]]) -> str:
    return json.dumps([[list(key), document] for key, document in changes], separators=(",", ":"))


@dataclass(frozen=True)
class CommitState:
    """What one commit writes of the state, split by where each part goes."""

    properties: dict[str, str] = field(default_factory=dict)
    removed_properties: list[str] = field(default_factory=list)
    summary: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, changes: Changes) -> CommitState:
        properties: dict[str, str] = {}
        removed: list[str] = []
        checkpoints: list[tuple[DocKey, Document | None]] = []
        processed: list[tuple[DocKey, Document | None]] = []
        history: list[tuple[DocKey, Document | None]] = []
        for key, document in changes.items():
            kind = key[1]
            if kind == CHECKPOINT:
                checkpoints.append((key, document))
                if document is None:
                    removed.append(property_name(key))
                else:
                    properties[property_name(key)] = json.dumps(document, separators=(",", ":"))
            elif kind == PROCESSED:
                processed.append((key, document))
            elif kind == CHECKPOINT_HISTORY and document is not None:
                history.append((key, document))
        summary: dict[str, str] = {}
        if checkpoints:
            summary[SUMMARY_CHECKPOINT] = _encode(iter(checkpoints))
        if processed:
            summary[SUMMARY_PROCESSED] = _encode(iter(processed))
        if history:
            summary[SUMMARY_HISTORY] = _encode(iter(history))
        return cls(properties, removed, summary)


class SummaryLog:
    """The processed ranges and checkpoint history of one table, replayed from the
    summaries of its current snapshot's ancestors. The result is kept per snapshot, and
    a snapshot whose parent's result is kept (this loader's next commit) is one step from
    it: a long-running load does not walk its whole history for every microbatch."""

    def __init__(self) -> None:
        self._kept: dict[tuple[int, str], dict[DocKey, Document]] = {}

    def documents(self, table: Table, kind: str) -> dict[DocKey, Document]:
        """The documents of ``kind`` as of ``table``'s current snapshot (kept: callers
        must not change the dict)."""
        from pyiceberg.table.snapshots import ancestors_of

        summary_key = SUMMARY_PROCESSED if kind == PROCESSED else SUMMARY_HISTORY
        current = table.current_snapshot()
        if current is None:
            return {}
        pending: list[Snapshot] = []
        found: dict[DocKey, Document] = {}
        for snapshot in ancestors_of(current, table.metadata):
            kept = self._kept.get((snapshot.snapshot_id, kind))
            if kept is not None:
                if not pending:
                    return kept
                found = dict(kept)
                break
            pending.append(snapshot)
        for snapshot in reversed(pending):
            summary = snapshot.summary
            for key, document in _entries(summary.get(summary_key) if summary else None):
                if document is None:
                    found.pop(key, None)
                else:
                    found[key] = document
        self._kept = {
            key: value for key, value in self._kept.items() if key[1] != kind
        }  # only the latest is needed
        self._kept[(current.snapshot_id, kind)] = found
        return found
