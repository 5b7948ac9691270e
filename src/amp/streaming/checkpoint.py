"""Checkpoints: where a load's committed state ends, so a restart resumes right after it.

A checkpoint is saved in the same destination transaction as the microbatch it
describes, so data and checkpoint never disagree. On start the checkpoint becomes the
``amp-resume`` header (protocol §4): the server continues after it, or reveals a reorg
that happened while the load was stopped. A reorg saves an ``is_reorg`` checkpoint at
the fork point; the checkpoint it replaces is kept in the history table for audit.

The stored document is versioned (``version``) so its format can evolve with migrations.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from amp.config import check_keys, typed
from amp.errors import ConfigError
from amp.streaming.state import StateStore
from amp.streaming.state_sql import check_table_prefix
from amp.streaming.types import BlockRange, MetadataError

log = logging.getLogger("amp.streaming.checkpoint")

CHECKPOINT_VERSION = 1
STORAGES = ("db",)


@dataclass(frozen=True)
class CheckpointConfig:
    """``config['checkpoint']``: off unless ``enabled``."""

    enabled: bool = False
    storage: str = "db"
    table_prefix: str = "amp_"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> CheckpointConfig:
        if data is None:
            return cls()
        check_keys("checkpoint config", data, ("enabled", "storage", "table_prefix"))
        config = cls(**data)
        typed("checkpoint config", "enabled", config.enabled, bool)
        check_table_prefix("checkpoint config", config.table_prefix)
        if config.storage not in STORAGES:
            raise ConfigError(
                f"checkpoint config['storage'] must be one of {', '.join(STORAGES)} (the "
                f"destination database), got {config.storage!r}"
            )
        return config


@dataclass(frozen=True)
class CheckpointState:
    """The last committed position: one range per network."""

    ranges: tuple[BlockRange, ...]
    timestamp: datetime = field(default_factory=lambda: datetime.now(UTC))
    worker_id: int = 0
    is_reorg: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": CHECKPOINT_VERSION,
            "ranges": [r.to_dict() for r in self.ranges],
            "timestamp": self.timestamp.isoformat(),
            "worker_id": self.worker_id,
            "is_reorg": self.is_reorg,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CheckpointState:
        version = data.get("version", CHECKPOINT_VERSION)
        if version != CHECKPOINT_VERSION:
            raise MetadataError(
                f"checkpoint format version {version} is newer than this amp understands "
                f"({CHECKPOINT_VERSION}); upgrade amp"
            )
        timestamp = datetime.fromisoformat(str(data["timestamp"]))
        if timestamp.tzinfo is None:
            timestamp = timestamp.replace(tzinfo=UTC)
        return cls(
            ranges=tuple(BlockRange.from_dict(r) for r in data.get("ranges", [])),
            timestamp=timestamp,
            worker_id=int(data.get("worker_id", 0)),
            is_reorg=bool(data.get("is_reorg", False)),
        )

    def to_resume_watermark(self) -> dict[str, dict[str, Any]]:
        """The ``amp-resume`` header value: each network's last block number and hash."""
        return {
            r.network: {"number": r.end, "hash": r.hash} for r in self.ranges if r.hash is not None
        }

    def last_range(self) -> BlockRange | None:
        return self.ranges[-1] if self.ranges else None


class CheckpointStore:
    """Saves, loads and deletes checkpoints of one connection in its destination."""

    def __init__(self, state: StateStore, connection_name: str) -> None:
        self.state = state
        self.connection_name = connection_name

    def ensure_tables(self) -> None:
        self.state.create_checkpoint_tables()

    def save(self, table: str, checkpoint: CheckpointState) -> None:
        """Upsert inside the caller's open transaction; a reorg checkpoint archives the
        checkpoint it replaces."""
        self.state.save_checkpoint(
            self.connection_name,
            table,
            checkpoint.worker_id,
            checkpoint.to_dict(),
            checkpoint.timestamp,
            archive_previous=checkpoint.is_reorg,
        )

    def load(self, table: str, worker_id: int = 0) -> CheckpointState | None:
        data = self.state.load_checkpoint(self.connection_name, table, worker_id)
        return CheckpointState.from_dict(data) if data is not None else None

    def delete(self, table: str, worker_id: int | None = None) -> int:
        return self.state.delete_checkpoint(self.connection_name, table, worker_id)

    def load_for_resume(self, table: str, worker_id: int = 0) -> CheckpointState | None:
        """Load with the guide's log lines, for the start of a load."""
        log.info("Loading checkpoint for connection=%s, table=%s", self.connection_name, table)
        checkpoint = self.load(table, worker_id)
        if checkpoint is None:
            log.debug(
                "No checkpoint found for connection=%s, table=%s", self.connection_name, table
            )
            log.info("Starting fresh streaming query")
            return None
        stamp = checkpoint.timestamp.replace(tzinfo=None).isoformat(timespec="seconds")
        if checkpoint.is_reorg:
            log.info(
                "Resuming from reorg checkpoint: %d ranges, is_reorg=true, timestamp %s",
                len(checkpoint.ranges),
                stamp,
            )
            points = ", ".join(f"{r.network}:{r.end + 1}" for r in checkpoint.ranges)
            log.info("Reorg resume points: %s", points)
        else:
            log.info(
                "Resuming from checkpoint: %d ranges, is_reorg=false, timestamp %s",
                len(checkpoint.ranges),
                stamp,
            )
        log.info(
            "Resuming stream from watermark: %s",
            {"ranges": [r.to_dict() for r in checkpoint.ranges]},
        )
        return checkpoint
