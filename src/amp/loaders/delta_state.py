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
                "Resuming from an older point would be wrong. Run `amp checkpoints reset "
                f"--table {key[3]}` to start this stream again (its rows are replaced range "
                "by range), or restore the log"
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


def catch_up(state: TableState, history: list[dict[str, Any]], version: int) -> None:
    """Fold the commits of ``history`` after ``state.version`` in, oldest first."""
    newer = [info for info in history if int(info.get("version", -1)) > state.version]
    for info in sorted(newer, key=lambda found: int(found["version"])):
        payload = read_payload(info)
        if payload is not None:
            state.apply(payload)
    state.version = version


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
