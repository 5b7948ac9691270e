"""When consecutive microbatches may share one destination transaction.

Why: a commit costs a round trip and a flush to disk, and a backfill of small
microbatches spends more time committing than writing. While the server already has
the next message waiting (the load is behind the head), microbatches accumulate in one
transaction up to ``max_rows`` rows or ``max_seconds``; as soon as the stream pauses
(the head is reached) the transaction commits. A checkpoint always sits on a microbatch
boundary, so exactly-once is unchanged. ``enabled: False`` commits every microbatch
alone, as the guide describes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from amp.config import check_keys
from amp.errors import ConfigError


@dataclass(frozen=True)
class CommitGrouping:
    """``config['commit_grouping']`` of a connection."""

    enabled: bool = True
    max_rows: int = 100_000
    max_seconds: float = 1.0

    def __post_init__(self) -> None:
        where = "commit_grouping config"
        if not isinstance(self.enabled, bool):
            raise ConfigError(f"{where}['enabled'] must be True or False, got {self.enabled!r}")
        if isinstance(self.max_rows, bool) or not isinstance(self.max_rows, int):
            raise ConfigError(f"{where}['max_rows'] must be a whole number, got {self.max_rows!r}")
        if self.max_rows < 1:
            raise ConfigError(f"{where}['max_rows'] must be >= 1, got {self.max_rows}")
        seconds = self.max_seconds
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not math.isfinite(seconds)
            or not 0 < seconds <= 3600
        ):
            raise ConfigError(
                f"{where}['max_seconds'] must be a number of seconds in (0, 3600], got {seconds!r}"
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> CommitGrouping:
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ConfigError(f"commit_grouping config must be a dict, got {type(data).__name__}")
        check_keys("commit_grouping config", data, ("enabled", "max_rows", "max_seconds"))
        return cls(**data)
