"""The loader contract: ``DataLoader``, what a destination provides for amp to load it.

Why this small: a new destination is one class. The load loop owns ordering, retries,
reorgs, checkpoints and the destination edge's breaker and limiter; a loader only knows
how to talk to its destination. Required:

    connect()                                  reach the destination
    write(table, batch, block_range) -> int    append rows
plus, for what they give (docs/loaders.md has the table):
    prepare_table(table, schema, mode, block_column)   create or check; replace on overwrite
    delete_blocks(table, block_column, start, end)     repair replays and reorgs exactly
    begin() / commit() / rollback(), transactional      roll a failed unit back
    state_store(prefix)                                 checkpoints and processed ranges
    disconnect(), finish_writes(), claim_stream(), first_range_start()

The loop never calls the transaction hooks directly: it opens ``loader.transaction()``,
a ``Transaction`` that owns the outcome (commit on a clean exit, rollback on an
exception, a failing rollback logged and never masking the original error).

The older client's extension API also runs here unchanged: a ``DataLoader[ConfigType]``
subclass with ``connect()``, ``disconnect()`` and ``_load_batch_impl(batch, table_name,
**kwargs) -> int`` is a loader whose ``write`` calls ``_load_batch_impl``; it gets the
same loop, retries, breaker and limiter, and the guarantees of a loader that neither
rolls back nor deletes (at-least-once).

Resilience is not the loader's: ``edge`` is the destination edge of its connection (a
circuit breaker shared by every worker, a rate limiter per worker), and
``circuit_breaker`` / ``rate_limiter`` answer for it as the guide's monitoring shows.
"""

from __future__ import annotations

import inspect
import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from enum import Enum, StrEnum
from types import TracebackType
from typing import Any, ClassVar, Generic, Self, TypeVar

import pyarrow as pa

from amp.errors import ConfigError
from amp.loaders.config_types import build_config, config_type_of, keys_of
from amp.streaming.checkpoint import CheckpointConfig
from amp.streaming.idempotency import IdempotencyConfig
from amp.streaming.resilience import (
    AdaptiveRateLimiter,
    CircuitBreaker,
    Clock,
    Edge,
    ErrorClassifier,
    ResilienceConfig,
    RetryPolicy,
)
from amp.streaming.state import RowsDelete
from amp.streaming.types import BlockRange

log = logging.getLogger("amp.loaders")

ConfigT = TypeVar("ConfigT")


class LoadMode(StrEnum):
    """``append`` keeps existing rows; ``overwrite`` replaces the table at load start."""

    APPEND = "append"
    OVERWRITE = "overwrite"


class TransactionStatus(Enum):
    ACTIVE = "active"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled back"


class Transaction:
    """One destination transaction, begun on creation.

    As a context manager it commits when its block ends cleanly and rolls back when it
    ends with an exception; ``commit()`` and ``rollback()`` end it early (a unit of work
    that spans many stream events holds one and ends it itself). A rollback that fails
    is logged, never raised: the error that caused it is the one that matters.
    """

    def __init__(self, loader: DataLoader[Any]) -> None:
        self.loader = loader
        loader.begin()
        self.status = TransactionStatus.ACTIVE

    def __repr__(self) -> str:
        return f"Transaction({self.loader.describe()}, {self.status.value})"

    def commit(self) -> None:
        """Commit; on failure the transaction is rolled back and the error raised."""
        if self.status is not TransactionStatus.ACTIVE:
            raise RuntimeError(f"commit() of a transaction already {self.status.value}")
        try:
            self.loader.commit()
        except BaseException:
            self.rollback()
            raise
        self.status = TransactionStatus.COMMITTED

    def rollback(self) -> None:
        """Abandon the transaction (nothing happens once it has ended)."""
        if self.status is not TransactionStatus.ACTIVE:
            return
        self.status = TransactionStatus.ROLLED_BACK
        try:
            self.loader.rollback()
        except Exception as exc:  # the original error, if any, is the one to report
            log.warning("rollback on %s failed: %s", self.loader.describe(), exc)

    def __enter__(self) -> Transaction:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is not None:
            self.rollback()
        elif self.status is TransactionStatus.ACTIVE:
            self.commit()


def _own(cls: type, name: str) -> bool:
    """Whether ``cls`` has its own ``name`` rather than DataLoader's default."""
    return getattr(cls, name) is not getattr(DataLoader, name)


class DataLoader(ABC, Generic[ConfigT]):
    """One destination connection; subclass it to write your own (docs/loaders.md).

    ``ConfigType`` (``DataLoader[MyConfig]``) is a dataclass or TypedDict describing the
    loader's own config keys, checked at ``configure_connection``; ``self.config`` is
    then a ``MyConfig``. amp's own loaders take a ``dict`` and list ``config_keys``.
    """

    # The name configure_connection knows it by (register_loader sets it).
    loader_type: ClassVar[str] = ""
    config_type: ClassVar[Any] = dict
    config_keys: ClassVar[frozenset[str]] = frozenset()
    # Whether begin()..commit() is atomic at the destination (needs all three hooks).
    transactional: ClassVar[bool] = False
    # Whether mode='overwrite' can replace the destination (an append-only log cannot);
    # None: whether the loader has its own prepare_table() (see ``can_overwrite``).
    supports_overwrite: ClassVar[bool | None] = None
    # Whether first_range_start() can answer (queries without a block column need it
    # to invalidate whole microbatches after a restart).
    finds_range_starts: ClassVar[bool] = False
    # For a loader without delete_blocks(): True lets a stream go on past a reorg,
    # keeping the rows of the replaced blocks (its readers handle reorgs); False, the
    # default, stops the load at the first reorg rather than leave them unnoticed.
    keeps_forked_rows: ClassVar[bool] = False
    # True where one process at a time may write the destination (a DuckDB file): the
    # workers of a parallel load must then be threads of that process, not Dask tasks.
    one_writing_process: ClassVar[bool] = False
    # Which of this destination's failures are worth retrying (override ``classify``
    # in an ErrorClassifier subclass to teach it your client library's errors).
    error_classifier: ClassVar[type[ErrorClassifier]] = ErrorClassifier

    @property
    def private(self) -> bool:
        """Whether what this loader writes is seen by this instance alone (an in-memory
        database): the workers of a parallel load, each with its own, could not share it."""
        return False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Read the class's declarations once, when it is defined: its name, its config
        type and keys; and refuse a transactional claim it cannot keep, before any load
        relies on it."""
        super().__init_subclass__(**kwargs)
        if not cls.loader_type:
            cls.loader_type = cls.__name__
        found = config_type_of(cls, DataLoader)
        if found is not None:
            cls.config_type = found
            keys = keys_of(found)
            if keys is not None and "config_keys" not in cls.__dict__:
                cls.config_keys = keys
        hooks = [name for name in ("begin", "commit", "rollback") if not _own(cls, name)]
        if cls.transactional and hooks:
            raise TypeError(
                f"{cls.__name__} sets transactional = True without its own "
                f"{', '.join(f'{name}()' for name in hooks)}"
            )

    def __init__(
        self, config: Mapping[str, Any] | ConfigT | None = None, connection_name: str = ""
    ) -> None:
        if not _own(type(self), "write") and not callable(getattr(self, "_load_batch_impl", None)):
            raise TypeError(
                f"{type(self).__name__} must define write(table, batch, block_range) -> int "
                "(or the older client's _load_batch_impl(batch, table_name, **kwargs) -> int)"
            )
        where = f"{self.loader_type} config"
        self.config: ConfigT = build_config(where, self.config_type, self.config_keys, config)
        self.connection_name = connection_name
        self._connected = False
        self.configure_resilience(ResilienceConfig())
        self.checkpoint_config = CheckpointConfig()
        self.idempotency_config = IdempotencyConfig()

    @classmethod
    def for_connection(cls, config: Mapping[str, Any], connection_name: str) -> Self:
        """The loader of connection ``connection_name``, also for a subclass whose own
        ``__init__(self, config)`` (the older client's form) takes no connection name."""
        parameters = inspect.signature(cls).parameters.values()
        if any(p.name == "connection_name" or p.kind is p.VAR_KEYWORD for p in parameters):
            return cls(config, connection_name=connection_name)
        loader = cls(config)
        loader.connection_name = connection_name
        return loader

    def configure_resilience(
        self, config: ResilienceConfig, clock: Clock | None = None, edge: Edge | None = None
    ) -> None:
        """Set this connection's retry, breaker and rate-limit settings (and its clock).

        ``edge`` is given when several loaders (the workers of one connection) share
        one destination edge; otherwise the loader's connection gets its own.
        """
        self.resilience_config = config
        self.edge = edge or Edge(
            f"destination {self.connection_name}", config, clock, self.error_classifier
        )
        self.clock: Clock = self.edge.clock

    @property
    def circuit_breaker(self) -> CircuitBreaker:
        """The destination edge's breaker, shared by every worker of the connection."""
        return self.edge.breaker

    @property
    def rate_limiter(self) -> AdaptiveRateLimiter:
        """The rate limiter of worker 0 (each worker has its own)."""
        return self.edge.rate_limiter(0)

    def retry_policy(self, worker_id: int = 0) -> RetryPolicy:
        """A fresh retry loop for one worker on the destination edge."""
        return self.edge.policy(worker_id)

    def transaction(self) -> Transaction:
        """Begin a destination transaction (see ``Transaction``)."""
        return Transaction(self)

    def rows_delete(self, table: str, block_column: str, start: int, end: int) -> RowsDelete:
        """``delete_blocks`` of ``start..end`` for the state store to run when it opens a
        microbatch; a SQL loader adds the statement so the store can send both at once."""
        return RowsDelete(lambda: self.delete_blocks(table, block_column, start, end))

    def has_rows_after(self, table: str, block_column: str, block: int) -> bool | None:
        """Whether ``table`` has a row whose ``block_column`` is after ``block``, in the
        open transaction; None when this destination cannot tell cheaply (then the loop
        checks each microbatch of a unit, see ``amp.loop.streaming``)."""
        return None

    def check_parallel_writers(self) -> None:
        """Raise ConfigError when several workers cannot write one table here at once
        (a parallel load asks before any worker starts); most destinations can."""

    def reload_state(self, table: str) -> None:
        """Read again whatever this loader keeps in memory of ``table``'s committed
        state, because other writers changed it (a parallel load's live worker taking
        over blocks the backfill wrote). Loaders that read their state from the
        destination each time keep nothing; Kafka rebuilds its state mirror."""

    def end_stale_writes(self, table: str) -> None:
        """End what writers of ``table`` that are gone (a killed process's workers) left
        open, so that reading committed state does not wait for them. A parallel load
        calls this once, before it reads its plan and before any worker starts. Where an
        open write ends with its connection (PostgreSQL, DuckDB) or its lease (Redis)
        there is nothing to do; Kafka fences those writers' transactional ids."""

    @property
    def idempotency_mode(self) -> str:
        """The idempotency mode in effect here: 'transactional' or 'tracking'."""
        return self.idempotency_config.mode_in_effect(self.loader_type, self.transactional)

    # -- what the loop can count on, read from what the subclass defines ---------------

    @property
    def deletes_blocks(self) -> bool:
        """Whether rows can be deleted by block: replays and reorgs are then exact."""
        return _own(type(self), "delete_blocks")

    @property
    def undoes_writes(self) -> bool:
        """Whether ``rollback()`` undoes the writes since ``begin()``."""
        return _own(type(self), "rollback")

    @property
    def can_overwrite(self) -> bool:
        """Whether mode='overwrite' can replace a table here (``supports_overwrite``)."""
        if self.supports_overwrite is not None:
            return self.supports_overwrite
        return _own(type(self), "prepare_table")

    @property
    def can_replay(self) -> bool:
        """Whether a failed unit of work can be written again whole without repeating
        rows: rolled back, or its blocks deleted first. Without either, the loop retries
        only the failed call (at-least-once)."""
        return self.undoes_writes or self.deletes_blocks

    def delivery_limits(self) -> str | None:
        """What this loader cannot guarantee, said at the start of each load; None for
        one that deletes rows by block (replays and reorgs are then exact)."""
        if self.deletes_blocks:
            return None
        reorg = (
            "rows of blocks a reorg replaces stay (keeps_forked_rows)"
            if self.keeps_forked_rows
            else "a reorg stops a streaming load"
        )
        if self.undoes_writes:
            what = f"cannot delete rows by block (it has no delete_blocks()): {reorg}"
        else:
            what = (
                "neither rolls back nor deletes rows by block: a write retried after a "
                "failure, or a load started again, can write rows twice (at-least-once), "
                f"and {reorg}"
            )
        return f"the {self.loader_type} loader {what}. See docs/loaders.md"

    def __repr__(self) -> str:  # never shows secrets
        return f"{type(self).__name__}({self.describe()})"

    def describe(self) -> str:
        """Where this loader writes, for messages: no passwords or tokens."""
        return f"{self.loader_type} ({type(self).__name__})"

    def describe_table(self, table: str) -> str:
        """What ``table`` names in this destination, for messages (a PostgreSQL loader
        adds its schema, a Kafka loader says which topic)."""
        return f"table {table}"

    # -- connection ------------------------------------------------------------------

    @abstractmethod
    def connect(self) -> None:
        """Reach the destination. Called before each load while not ``connected``."""

    def disconnect(self) -> None:
        """Let the destination go; ``close()`` calls it once after ``connect()``."""

    @property
    def connected(self) -> bool:
        return self._connected

    def ensure_connected(self) -> None:
        """``connect()`` unless connected (what the loop calls at each start)."""
        if not self.connected:
            self.connect()
            self._connected = True

    def close(self) -> None:
        """End the open transaction, release the streams, disconnect (never raises:
        it runs while another error may be on its way out)."""
        self.rollback()
        self.release_stream()
        if self._connected:
            self._connected = False
            try:
                self.disconnect()
            except Exception as exc:
                log.warning("disconnecting %s failed: %s", self.describe(), exc)

    def claim_stream(self, table: str, worker_id: int) -> None:
        """Become the one writer of the stream (this connection, ``table``, ``worker_id``),
        or raise StreamOwnedError naming the load that is. Called after ``connect()``;
        claiming a stream this loader already holds does nothing. ``close()`` releases.

        Why: two loads of one stream at once write its rows twice. The default claims
        nothing, for a destination that has nothing to lock.
        """
        return None

    def release_stream(self) -> None:
        """Give up every stream this loader claimed (never raises)."""
        return None

    # -- tables and rows ----------------------------------------------------------------

    def prepare_table(
        self, table: str, schema: pa.Schema, mode: LoadMode, block_column: str
    ) -> None:
        """Make ``table`` ready for rows of ``schema`` (in its own transaction): create it
        or check it, drop its rows on ``overwrite``, index ``block_column``. The default
        does nothing (a destination that needs no table), so it cannot overwrite."""
        if mode is LoadMode.OVERWRITE:
            raise ConfigError(
                f"the {self.loader_type} loader defines no prepare_table(), so it cannot "
                f"replace {table}; load with mode='append'"
            )

    def write(
        self, table: str, batch: pa.RecordBatch, block_range: BlockRange | None = None
    ) -> int:
        """Append ``batch`` (rows of ``block_range``, when streamed) inside the open
        transaction; returns the rows written. The default calls the older client's
        ``_load_batch_impl(batch, table)``."""
        load_batch = getattr(self, "_load_batch_impl", None)
        if load_batch is None:
            raise NotImplementedError(f"{type(self).__name__} defines no write()")
        written = load_batch(batch, table)
        return written if isinstance(written, int) else batch.num_rows

    def finish_writes(self) -> None:
        """End any write still streaming (a COPY) so that other statements can run in
        the open transaction; called by the loop at the end of each microbatch."""

    def delete_blocks(self, table: str, block_column: str, start: int, end: int) -> int:
        """Delete rows whose ``block_column`` is in ``start..end``; returns rows deleted.
        Only called when the subclass defines it (``deletes_blocks``)."""
        raise NotImplementedError(f"{type(self).__name__} defines no delete_blocks()")

    def first_range_start(self, table: str, block: int) -> int | None:
        """For a table whose rows carry their microbatch's range (``_amp_block_start``,
        ``_amp_block_end``): the start of the earliest microbatch whose range reaches
        ``block`` or beyond, None when no row does. Only asked of loaders that set
        ``finds_range_starts``; without it such queries cannot resume exactly."""
        return None

    # -- transaction hooks (optional: without them each write is final at once) ---------

    def begin(self) -> None:
        """Open a transaction."""

    def commit(self) -> None:
        """Make everything since ``begin()`` durable."""

    def rollback(self) -> None:
        """Abandon the open transaction; must not raise when none is open."""


# The name amp's modules used before DataLoader was public: the same class, kept so
# that code written against it still imports.
Loader = DataLoader
