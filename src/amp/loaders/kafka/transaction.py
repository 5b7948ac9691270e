"""What one open Kafka transaction holds, and the deterministic row ids it publishes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

StateKey = tuple[Any, ...]

# Message headers in the list form the producer takes (the value type is the producer's,
# wider than our text, because a list's item type must match exactly).
Headers = list[tuple[str, str | bytes | None]]


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


def _row_id(table: str, network: str, block: int, position: int) -> str:
    return f"{table}:{network}:{block}:{position}"


def _written_keys(table: str, block: int, written: _Written) -> list[str]:
    if written.keys is not None:
        return written.keys
    return [_row_id(table, written.network, block, p) for p in range(written.count)]
