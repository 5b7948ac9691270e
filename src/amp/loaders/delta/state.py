"""amp's delivery state inside a Delta table's own commits.

Why in the commits: a Delta commit is atomic, so a unit's rows, its block deletes, its
processed ranges and its checkpoint written as ONE commit are seen by readers, and by a
restarted load, all together or not at all. No side table can be committed with them.

Each commit amp makes carries, in its commit info (``commitInfo``), one JSON document
under the key ``amp`` (``StatePayload``):

    {"checkpoints": [[key, seq, document-or-null], ...],   every checkpoint amp knows
     "put": [[key, document], ...],                         processed ranges, history
     "delete": [key, ...]}                                  documents this commit drops

and one Delta application transaction (``txn``: app id → version) per checkpoint it
changes, whose version is the checkpoint's sequence number ``seq``. Delta keeps the
latest ``txn`` of every app id in its log checkpoints forever (unless
``delta.setTransactionRetentionDuration`` is set), while commit infos go with log
cleanup (``delta.logRetentionDuration``, 30 days by default). Hence:

- a checkpoint is the entry with the highest ``seq`` found in any commit, and it must
  match its ``txn`` version: a lower one means the commit that holds it was cleaned up,
  and reading it refuses (``StateLostError``) instead of resuming from an older point;
- every commit carries every checkpoint (a carried copy keeps its ``seq``), so cleanup
  of old commits never loses the current ones; a deleted checkpoint is carried as null;
- processed ranges and archived checkpoints live as long as the commits that carry
  them: log cleanup is their cleanup.

A parallel load's workers commit concurrently: a worker's commit may carry an older
copy of another worker's checkpoint, which never wins because its ``seq`` is lower.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from amp.errors import DestinationError
from amp.streaming.state_documents import CHECKPOINT, DocKey, Document

PAYLOAD_KEY = "amp"
_APP_PREFIX = "amp:"


class StateLostError(DestinationError):
    """A checkpoint's ``txn`` says it exists, but no commit left holds it."""


def app_id(key: DocKey) -> str:
    """The Delta application-transaction id of a checkpoint key."""
    return _APP_PREFIX + json.dumps(list(key), separators=(",", ":"))


def _key(raw: Iterable[Any]) -> DocKey:
    return tuple(raw)


@dataclass
class TableState:
    """What the commits of one Delta table say, read up to ``version``."""

    version: int = -1
    # checkpoint key -> (seq, document or None for a deleted one)
    checkpoints: dict[DocKey, tuple[int, Document | None]] = field(default_factory=dict)
    # processed-range and checkpoint-history documents
    documents: dict[DocKey, Document] = field(default_factory=dict)

    def apply(self, payload: Mapping[str, Any]) -> None:
        """Fold one commit's payload in (commits in version order)."""
        for raw, seq, document in payload.get("checkpoints", ()):
            key = _key(raw)
            held = self.checkpoints.get(key)
            if held is None or int(seq) > held[0]:
                self.checkpoints[key] = (int(seq), document)
        for raw in payload.get("delete", ()):
            self.documents.pop(_key(raw), None)
        for raw, document in payload.get("put", ()):
            self.documents[_key(raw)] = document

    def checkpoint(self, key: DocKey, txn_version: int | None) -> Document | None:
        """The current checkpoint at ``key`` (None: none), checked against its ``txn``."""
        held = self.checkpoints.get(key)
        if txn_version is not None and (held is None or held[0] < txn_version):
            raise StateLostError(
                f"the Delta table's log says checkpoint {key[2]!r}/{key[3]!r} worker "
                f"{key[4]} was saved (version {txn_version} of {app_id(key)}), but no commit "
                "left in the log holds it (log cleanup removed it: delta.logRetentionDuration). "
                "Resuming from an older point would be wrong, and Delta keeps the txn, so "
                "this stream cannot start again in this table: load under another "
                "connection name with idempotency on (each range's rows are replaced), or "
                "into another table, or restore the log's commit files"
            )
        return None if held is None else held[1]

    def live_checkpoints(self) -> dict[DocKey, Document]:
        return {key: doc for key, (_, doc) in self.checkpoints.items() if doc is not None}


def read_payload(info: Mapping[str, Any]) -> dict[str, Any] | None:
    """amp's payload in one commit info (None: a commit amp did not make)."""
    raw = info.get(PAYLOAD_KEY)
    if not isinstance(raw, str):
        return None
    try:
        payload = json.loads(raw)
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


def catch_up(state: TableState, log: DeltaLog, version: int) -> None:
    """Fold the commits after ``state.version`` up to ``version`` in, oldest first.

    Why the commit files and not ``DeltaTable.history()``: delta-rs 1.6 labels the
    entries of ``history()`` from the version the table object has loaded while listing
    the newest files of the log, so a commit made meanwhile shifts every label."""
    first = state.version + 1
    versions = range(first, version + 1) if first > 0 else log.versions(version)
    for number in versions:
        info = log.commit_info(number)
        payload = read_payload(info) if info is not None else None
        if payload is not None:
            state.apply(payload)
    state.version = version


class DeltaLog:
    """The commit files of one Delta table's log, through delta-rs's own object store
    (the same ``storage_options`` as the table)."""

    def __init__(self, location: str, storage_options: dict[str, str] | None) -> None:
        from deltalake.fs import DeltaStorageHandler
        from pyarrow.fs import PyFileSystem

        self.fs = PyFileSystem(DeltaStorageHandler(location, storage_options))

    def versions(self, upto: int) -> list[int]:
        """The commit versions still in the log (cleanup removes old ones), up to ``upto``."""
        from pyarrow.fs import FileSelector

        found = []
        for entry in self.fs.get_file_info(FileSelector("_delta_log", allow_not_found=True)):
            name = entry.base_name
            stem = name[: -len(".json")]
            if name.endswith(".json") and stem.isdigit() and int(stem) <= upto:
                found.append(int(stem))
        return sorted(found)

    def commit_info(self, version: int) -> dict[str, Any] | None:
        """The ``commitInfo`` of commit ``version`` (None: cleaned up, or none)."""
        try:
            with self.fs.open_input_stream(f"_delta_log/{version:020d}.json") as stream:
                text = stream.read().decode("utf-8")
        except FileNotFoundError:
            return None
        for line in text.splitlines():
            if '"commitInfo"' in line:
                action = json.loads(line)
                if "commitInfo" in action:
                    info = action["commitInfo"]
                    return info if isinstance(info, dict) else None
        return None


def build_payload(
    state: TableState,
    staged: Mapping[DocKey, Document | None],
    seqs: Mapping[DocKey, int],
) -> tuple[str, dict[str, int]]:
    """The JSON payload of a commit staging ``staged`` over ``state``, and the
    ``txn`` versions to set (app id → seq) for the checkpoints it changes.
    ``seqs`` holds each changed checkpoint's current ``txn`` version (0: none)."""
    carried = dict(state.checkpoints)
    transactions: dict[str, int] = {}
    puts: list[list[Any]] = []
    deletes: list[list[Any]] = []
    for key, document in staged.items():
        if key[1] == CHECKPOINT:
            seq = max(seqs.get(key, 0), carried.get(key, (0, None))[0]) + 1
            carried[key] = (seq, document)
            transactions[app_id(key)] = seq
        elif document is None:
            deletes.append(list(key))
        else:
            puts.append([list(key), document])
    payload = {
        "checkpoints": [[list(key), seq, doc] for key, (seq, doc) in carried.items()],
        "put": puts,
        "delete": deletes,
    }
    return json.dumps(payload, separators=(",", ":"), default=str), transactions
