"""The loader contract: what a destination must do for amp to deliver exactly once.

Why this small: a new destination is one file. The pipeline owns ordering, retries,
reorgs and checkpoints; a loader only knows how to talk to its destination:

    connect() / close()
    prepare_table(table, schema, mode)     create (or check) the table, index its block column
    begin() / write(table, batch) / commit() / rollback()
    delete_blocks(table, column, start, end)   rows of invalidated blocks, inside a transaction

``transactional`` says whether ``begin``..``commit`` is atomic at the destination. A
loader without transactions must make ``write`` idempotent (deterministic keys) instead.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, ClassVar

import pyarrow as pa

from amp.config import check_keys
from amp.streaming.checkpoint import CheckpointConfig
from amp.streaming.idempotency import IdempotencyConfig
from amp.streaming.resilience import (
    AdaptiveRateLimiter,
    CircuitBreaker,
    Clock,
    ResilienceConfig,
    RetryPolicy,
    SystemClock,
)
from amp.streaming.types import BlockRange


class LoadMode(StrEnum):
    """``append`` keeps existing rows; ``overwrite`` replaces the table at load start."""

    APPEND = "append"
    OVERWRITE = "overwrite"


class Loader(ABC):
    """One destination connection. Subclasses set ``loader_type`` and ``config_keys``."""

    loader_type: ClassVar[str]
    transactional: ClassVar[bool] = True
    # Whether mode='overwrite' can replace the destination (an append-only log cannot).
    supports_overwrite: ClassVar[bool] = True
    config_keys: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, config: Mapping[str, Any], connection_name: str = "") -> None:
        check_keys(f"{self.loader_type} config", config, self.config_keys)
        self.config = dict(config)
        self.connection_name = connection_name
        self.configure_resilience(ResilienceConfig())
        self.checkpoint_config = CheckpointConfig()
        self.idempotency_config = IdempotencyConfig()

    def configure_resilience(self, config: ResilienceConfig, clock: Clock | None = None) -> None:
        """Set this connection's retry, breaker and rate-limit settings (and its clock).

        ``circuit_breaker`` and ``rate_limiter`` are live objects, for monitoring.
        """
        self.resilience_config = config
        self.clock: Clock = clock or SystemClock()
        self.circuit_breaker = CircuitBreaker(
            config.circuit_breaker, self.clock, name=self.connection_name
        )
        self.rate_limiter = AdaptiveRateLimiter(config.back_pressure, self.clock)

    def retry_policy(self) -> RetryPolicy:
        """A fresh retry loop (own backoff) sharing this connection's breaker and limiter."""
        return RetryPolicy(
            self.resilience_config,
            breaker=self.circuit_breaker,
            rate_limiter=self.rate_limiter,
            clock=self.clock,
        )

    def __repr__(self) -> str:  # never shows secrets
        return f"{type(self).__name__}({self.describe()})"

    @abstractmethod
    def describe(self) -> str:
        """Where this loader writes, for messages: no passwords or tokens."""

    @abstractmethod
    def connect(self) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    @property
    @abstractmethod
    def connected(self) -> bool: ...

    @abstractmethod
    def prepare_table(
        self, table: str, schema: pa.Schema, mode: LoadMode, block_column: str
    ) -> None:
        """Make ``table`` ready for rows of ``schema`` (in its own transaction)."""

    @abstractmethod
    def begin(self) -> None: ...

    @abstractmethod
    def write(
        self, table: str, batch: pa.RecordBatch, block_range: BlockRange | None = None
    ) -> int:
        """Append ``batch`` (rows of ``block_range``, when streamed) inside the open
        transaction; returns the rows written."""

    @abstractmethod
    def delete_blocks(self, table: str, block_column: str, start: int, end: int) -> int:
        """Delete rows whose ``block_column`` is in ``start..end``; returns rows deleted."""

    @abstractmethod
    def commit(self) -> None: ...

    @abstractmethod
    def rollback(self) -> None:
        """Abandon the open transaction; must not raise when none is open."""
