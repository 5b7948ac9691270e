"""What a load reports: one ``LoadResult`` per committed microbatch, reorg or batch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from amp.errors import FatalLoadError


@dataclass
class LoadResult:
    """The outcome of one microbatch, reorg or batch, as the guide's examples read it."""

    success: bool
    rows_loaded: int
    table_name: str
    loader_type: str
    duration: float
    error: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fatal(cls, table: str, loader_type: str, error: FatalLoadError) -> LoadResult:
        """The failed result reported before a FatalLoadError is raised."""
        return cls(False, 0, table, loader_type, 0.0, str(error), {"operation": "fatal"})
