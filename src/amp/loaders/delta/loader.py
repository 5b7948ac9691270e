"""Delta Lake loader (delta-rs): each unit of work is ONE Delta commit.

Why buffered: a Delta commit is atomic, so amp buffers a unit (its Arrow batches, its
block deletes, its staged state documents) and ``commit()`` writes it as one commit
holding the deletes, the rows, the processed ranges and the checkpoint together
(``amp.loaders.delta.state``). A crash before the commit leaves no visible trace (at
most unreferenced Parquet files, which ``VACUUM`` removes); after it, all of it.

How a unit becomes one commit:
- rows only: an append;
- deletes only (a reorg's revert): a delete by block predicate;
- both: delta-rs's predicate overwrite, which deletes the rows matching the predicate
  and appends the new rows, which must all match it too. The predicate is the unit's
  delete ranges, widened to cover its rows only where the loader proved the table has
  no row the loop did not ask to delete (``has_rows_after`` answered False, or a count
  of the widened part found none).

Layout: table ``t`` is the Delta table ``<table_path>/t``; a parallel load's plan is a
state-only Delta table ``<table_path>/_amp_parallel_plans/t``; stream locks live in
``<table_path>/_amp_locks`` (``amp.loaders.delta.claim``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from deltalake import CommitProperties, DeltaTable, Transaction, WriterProperties, write_deltalake
from deltalake.exceptions import (
    CommitFailedError,
    DeltaError,
)

from amp.errors import ConfigError, DestinationError
from amp.loaders.base import DataLoader, LoadMode
from amp.loaders.blocks import RANGE_END, RANGE_START
from amp.loaders.delta.claim import LOCK_DIR, Fence, FileClaim, fence_app_id
from amp.loaders.delta.config import (
    KEYS,
    DeltaErrorClassifier,
    DeltaSettings,
    local_tables,
    table_location,
)
from amp.loaders.delta.predicate import Pending, between, unit_predicate
from amp.loaders.delta.state import DeltaLog, TableState, build_payload, catch_up
from amp.loaders.delta.state import app_id as checkpoint_app_id
from amp.loaders.delta.store import DeltaDocuments
from amp.loaders.delta.types import delta_schema, to_delta
from amp.loaders.ownership import Stream
from amp.redact import redact_text, redact_url
from amp.streaming.state_documents import CHECKPOINT, DocKey, Document, DocumentStateStore
from amp.streaming.types import BlockRange

log = logging.getLogger("amp.loaders.delta.loader")

_STATE_SCHEMA = pa.schema([pa.field("_amp_state", pa.string())])
_CONFLICT_RETRIES = 8  # a unit committed again on a newer version before it is replayed


class DeltaLakeLoader(DataLoader[dict[str, Any]]):
    """Loads into Delta tables under ``table_path``. Keys: table_path (required),
    storage_options, partition_by, target_file_size, compression, configuration,
    max_commit_retries, compact_every."""

    loader_type = "deltalake"
    transactional = True
    finds_range_starts = True
    error_classifier = DeltaErrorClassifier
    config_keys = KEYS

    def __init__(self, config: dict[str, Any], connection_name: str = "") -> None:
        super().__init__(config, connection_name)
        settings = DeltaSettings.from_config(self.config)
        self.local = settings.local
        self.table_path = settings.table_path
        self.storage_options = settings.storage_options
        self.configuration = settings.configuration
        self.partition_by = settings.partition_by
        self.target_file_size = settings.target_file_size
        self.max_commit_retries = settings.max_commit_retries
        self.compact_every = settings.compact_every
        self.compression = settings.compression
        self._tables: dict[str, DeltaTable] = {}
        self._states: dict[str, TableState] = {}
        self._pending: dict[str, Pending] | None = None
        self._staged: dict[DocKey, Document | None] | None = None
        self._refreshed: set[str] = set()
        self._schemas: dict[str, pa.Schema] = {}
        self._logs: dict[str, DeltaLog] = {}
        self._claims: dict[Stream, FileClaim | None] = {}
        self._fences: dict[Stream, Fence] = {}
        self._commits = 0

    # -- where things are ---------------------------------------------------------------

    def describe(self) -> str:
        return f"deltalake {redact_url(self.table_path)}"

    def describe_table(self, table: str) -> str:
        return f"Delta table {redact_url(self.location(table))}"

    def location(self, table: str) -> str:
        """The Delta table that holds ``table`` (a plan table: its state-only table)."""
        return table_location(self.table_path, table)

    def table_names(self) -> list[str]:
        """Every amp table under ``table_path`` (plan tables as ``t/parallel-plan``)."""
        if not self.local:
            raise ConfigError(
                "listing every table needs a local table_path; name the table (--table)"
            )
        return local_tables(self.table_path)

    # -- connection ---------------------------------------------------------------------

    def connect(self) -> None:
        """Nothing to open: each table is opened (and its state read) when first used.
        A local table_path must be a directory we can create."""
        if self.local:
            try:
                os.makedirs(self.table_path, exist_ok=True)
            except OSError as exc:
                raise DestinationError(
                    f"cannot create the Delta table_path {self.table_path}: {exc}"
                ) from exc

    def disconnect(self) -> None:
        self._schemas.clear()
        self._tables.clear()
        self._states.clear()

    def table(self, table: str, refresh: bool = True) -> DeltaTable | None:
        """The Delta table of ``table`` at its latest version (None: not created yet)."""
        location = self.location(table)
        found = self._tables.get(location)
        try:
            if found is None:
                if not DeltaTable.is_deltatable(location, self.storage_options or None):
                    return None
                found = DeltaTable(location, storage_options=self.storage_options or None)
                self._tables[location] = found
            elif refresh:
                found.update_incremental()
        except DeltaError as exc:
            raise DestinationError(
                f"cannot read the Delta table {redact_url(location)}: {redact_text(str(exc))}"
            ) from exc
        return found

    def fresh_table(self, table: str) -> DeltaTable | None:
        """``table`` read at its latest version once per transaction (always outside
        one): the transaction's reads and its commit then see one version, and a
        concurrent commit is found by Delta's conflict check."""
        location = self.location(table)
        if self._pending is None or location not in self._refreshed:
            found = self.table(table)
            if self._pending is not None and found is not None:
                self._refreshed.add(location)
            return found
        return self.table(table, refresh=False)

    def state_of(self, table: str) -> TableState:
        """The state found in ``table``'s commits, caught up with its latest version."""
        location = self.location(table)
        state = self._states.setdefault(location, TableState())
        delta = self.table(table, refresh=False)
        if delta is None:
            return state
        version = delta.version()
        if version > state.version:
            log = self._logs.get(location)
            if log is None:
                log = self._logs[location] = DeltaLog(location, self.storage_options or None)
            catch_up(state, log, version)
        return state

    def reload_state(self, table: str) -> None:
        if self.table(table) is not None:
            self.state_of(table)

    # -- one writer per stream ----------------------------------------------------------

    def claim_stream(self, table: str, worker_id: int) -> None:
        stream = Stream(self.connection_name, table, worker_id)
        if stream in self._claims:
            return
        claim = None
        if self.local:
            claim = FileClaim(os.path.join(self.table_path, LOCK_DIR), stream, self.describe())
            claim.acquire()
        self._claims[stream] = claim
        delta = self.table(table)
        found = delta.transaction_version(fence_app_id(stream)) if delta is not None else None
        self._fences[stream] = Fence(stream, found or 0)

    def release_stream(self) -> None:
        claims, self._claims = self._claims, {}
        self._fences.clear()
        for claim in claims.values():
            if claim is not None:
                claim.release()

    # -- tables -------------------------------------------------------------------------

    def prepare_table(
        self, table: str, schema: pa.Schema, mode: LoadMode, block_column: str
    ) -> None:
        if block_column not in schema.names:
            raise ConfigError(f"the rows of {table} have no block column {block_column!r}")
        missing = [name for name in self.partition_by if name not in schema.names]
        if missing:
            raise ConfigError(
                f"deltalake config['partition_by'] names {', '.join(missing)}, not columns "
                f"of {table} ({', '.join(schema.names)}); partition by the query's columns"
            )
        wanted = delta_schema(schema, frozenset({block_column, RANGE_START, RANGE_END}))
        self._schemas.pop(self.location(table), None)
        delta = self.table(table)
        if delta is None:
            self._create(table, wanted, self.partition_by)
            return
        have = set(pa.schema(delta.schema().to_arrow()).names)
        absent = [name for name in wanted.names if name not in have]
        if mode is LoadMode.OVERWRITE:
            # One commit removing every row, carrying the state like any other.
            self._check_fences(table, delta)
            write_deltalake(
                delta,
                wanted.empty_table(),
                mode="overwrite",
                schema_mode="overwrite",
                partition_by=self.partition_by or None,
                commit_properties=self._commit_properties(table, {}),
            )
            for fence in self._fences_of(table):
                fence.expected += 1
        elif absent:
            raise ConfigError(
                f"the Delta table {redact_url(self.location(table))} has no column(s) "
                f"{', '.join(absent)} that the query returns; load with mode='overwrite', "
                "choose another table, or add the columns"
            )

    def _create(self, table: str, schema: pa.Schema, partition_by: list[str]) -> None:
        """Create the table (a concurrent worker may win: then it exists, which is fine)."""
        try:
            DeltaTable.create(
                self.location(table),
                schema,
                mode="ignore",
                partition_by=partition_by or None,
                configuration=self.configuration or None,
                storage_options=self.storage_options or None,
            )
        except CommitFailedError:
            if self.table(table) is None:
                raise

    # -- rows and deletes, buffered until commit ----------------------------------------

    def begin(self) -> None:
        if self._pending is not None:
            raise DestinationError("begin() while a Delta transaction is already open")
        self._pending = {}
        self._staged = {}
        self._refreshed = set()

    def _part(self, table: str) -> Pending:
        if self._pending is None:
            raise DestinationError("a Delta write outside begin()/commit()")
        if table not in self._pending:
            self.fresh_table(table)
        return self._pending.setdefault(table, Pending())

    def write(
        self, table: str, batch: pa.RecordBatch, block_range: BlockRange | None = None
    ) -> int:
        if batch.num_rows:
            part = self._part(table)
            part.batches.append(to_delta(batch, self._arrow_schema(table)))
        return batch.num_rows

    def _arrow_schema(self, table: str) -> pa.Schema:
        """The Delta table's schema as Arrow (what rows are cast to)."""
        location = self.location(table)
        found = self._schemas.get(location)
        if found is None:
            delta = self.table(table, refresh=False)
            if delta is None:
                raise DestinationError(f"{self.describe_table(table)} does not exist")
            found = pa.schema(delta.schema().to_arrow())
            self._schemas[location] = found
        return found

    def delete_blocks(self, table: str, block_column: str, start: int, end: int) -> int:
        """Buffer the delete; count what it removes now: the committed rows in the range
        not already covered by an earlier delete of this transaction (a scan pruned by
        the files' statistics), plus the buffered rows it drops."""
        part = self._part(table)
        dropped = 0
        for index, buffered in enumerate(part.batches):
            inside = pc.and_(
                pc.greater_equal(buffered[block_column], start),
                pc.less_equal(buffered[block_column], end),
            )
            hits = int(pc.sum(pc.cast(inside, pa.int64())).as_py() or 0)
            if hits:
                part.batches[index] = buffered.filter(pc.invert(inside))
                dropped += hits
        committed = self._count(table, between(block_column, start, end), part)
        part.deletes.append((block_column, start, end))
        part.committed_deleted += committed
        return committed + dropped

    def _count(self, table: str, where: ds.Expression, part: Pending) -> int:
        delta = self.table(table, refresh=False)
        if delta is None:
            return 0
        for column, start, end in part.deletes:
            where = where & ~between(column, start, end)
        dataset = delta.to_pyarrow_dataset()
        return int(dataset.count_rows(filter=where))

    def has_rows_after(self, table: str, block_column: str, block: int) -> bool | None:
        part = self._part(table)
        for buffered in part.batches:
            if len(buffered) and (pc.max(buffered[block_column]).as_py() or 0) > block:
                return True
        if self._count(table, ds.field(block_column) > block, part):
            return True
        held = part.clear_after.get(block_column)
        part.clear_after[block_column] = block if held is None else min(held, block)
        return False

    def first_range_start(self, table: str, block: int) -> int | None:
        delta = self.table(table)
        if delta is None:
            return None
        found = delta.to_pyarrow_dataset().to_table(
            columns=[RANGE_START], filter=ds.field(RANGE_END) >= block
        )
        low = pc.min(found[RANGE_START]).as_py() if len(found) else None
        return None if low is None else int(low)

    # -- the commit ---------------------------------------------------------------------

    def rollback(self) -> None:
        self._pending = None
        self._staged = None

    def commit(self) -> None:
        pending, staged = self._pending, self._staged
        if pending is None or staged is None:
            raise DestinationError("commit() without begin()")
        try:
            self._commit(pending, staged)
        finally:
            self._pending = self._staged = None

    def _commit(self, pending: dict[str, Pending], staged: dict[DocKey, Document | None]) -> None:
        by_table: dict[str, dict[DocKey, Document | None]] = {}
        for key, document in staged.items():
            by_table.setdefault(self.location(key[3]), {})[key] = document
        tables = {self.location(name): name for name in pending}
        for key in staged:
            tables.setdefault(self.location(key[3]), key[3])
        if len(tables) > 1:
            raise DestinationError(
                f"one amp transaction wrote {len(tables)} Delta tables; a Delta commit holds "
                "one table (this is a bug in the caller)"
            )
        for location, name in tables.items():
            self._commit_table(name, pending.get(name, Pending()), by_table.get(location, {}))

    def _commit_table(
        self, table: str, part: Pending, staged: dict[DocKey, Document | None]
    ) -> None:
        delta = self.fresh_table(table)
        if delta is None:
            if part.batches or part.deletes:
                raise DestinationError(f"{self.describe_table(table)} does not exist")
            if not staged:
                return
            self._create(table, _STATE_SCHEMA, [])
            delta = self.table(table, refresh=False)
            assert delta is not None
        rows = [batch for batch in part.batches if len(batch)]
        data = pa.concat_tables(rows, promote_options="permissive") if rows else None
        if not part.committed_deleted:
            # Nothing committed to delete (delta-rs makes no commit for a delete that
            # matches no row, and the state must still be committed): an append.
            part.deletes = []
        if not (part.deletes or rows or staged):
            return
        for attempt in range(_CONFLICT_RETRIES + 1):
            self._check_fences(table, delta)
            before = delta.version()
            try:
                self._write_unit(table, delta, part, data, staged)
                break
            except CommitFailedError as exc:
                # delta-rs counts every commit as reading the whole table, so another
                # worker's delete conflicts with this unit's append. The unit's blocks
                # are its stream's alone: on the new version it is the same commit,
                # unless what its deletes remove changed (then the unit is replayed).
                delta.update_incremental()
                if attempt == _CONFLICT_RETRIES or self._removed(table, part) != (
                    part.committed_deleted
                ):
                    raise DestinationError(
                        f"the Delta commit to {self.describe_table(table)} conflicted with "
                        f"another writer's: {redact_text(str(exc))}; the unit is replayed"
                    ) from exc
                log.info("Delta commit conflict on %s; committing again on the new version", table)
            except DeltaError as exc:
                raise DestinationError(
                    f"the Delta commit to {self.describe_table(table)} failed: "
                    f"{redact_text(str(exc))}"
                ) from exc
        delta.update_incremental()
        if delta.version() == before:
            raise DestinationError(
                f"delta-rs made no commit to {self.describe_table(table)} for this unit; "
                "its state would be lost, so the unit is not taken as committed"
            )
        for fence in self._fences_of(table):
            fence.expected += 1
        self._commits += 1
        if self.compact_every and self._commits % self.compact_every == 0 and data is not None:
            self._compact(table, delta)

    def _write_unit(
        self,
        table: str,
        delta: DeltaTable,
        part: Pending,
        data: pa.Table | None,
        staged: Mapping[DocKey, Document | None],
    ) -> None:
        """The unit's one commit: overwrite by predicate, delete, or append."""
        properties = self._commit_properties(table, staged)
        if part.deletes and data is not None:
            predicate = self._predicate(table, part, data)
            write_deltalake(
                delta,
                data,
                mode="overwrite",
                predicate=predicate,
                **self._write_options(),
                commit_properties=properties,
            )
        elif part.deletes:
            delta.delete(self._predicate(table, part, None), commit_properties=properties)
        else:
            empty = pa.schema(delta.schema().to_arrow()).empty_table()
            write_deltalake(
                delta,
                data if data is not None else empty,
                mode="append",
                **self._write_options(),
                commit_properties=properties,
            )

    def _removed(self, table: str, part: Pending) -> int:
        """The committed rows the unit's deletes match now."""
        if not part.deletes:
            return 0
        where = None
        for column, start, end in part.deletes:
            term = between(column, start, end)
            where = term if where is None else where | term
        assert where is not None
        return self._count(table, where, Pending())

    def _predicate(self, table: str, part: Pending, data: pa.Table | None) -> str:
        def count(low: int, high: int) -> int:
            return self._count(table, between(part.deletes[0][0], low, high), part)

        return unit_predicate(part, data, count, self.describe_table(table))

    def _write_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "writer_properties": WriterProperties(compression=self.compression)  # type: ignore[arg-type]
        }
        if self.target_file_size is not None:
            options["target_file_size"] = self.target_file_size
        return options

    def _commit_properties(
        self, table: str, staged: Mapping[DocKey, Document | None]
    ) -> CommitProperties:
        """amp's payload and application transactions: the state documents' and the
        fences of the streams this loader claimed on ``table``."""
        state = self.state_of(table)
        delta = self.table(table, refresh=False)
        seqs: dict[DocKey, int] = {}
        for key in staged:
            if key[1] == CHECKPOINT and delta is not None:
                seqs[key] = delta.transaction_version(checkpoint_app_id(key)) or 0
        payload, versions = build_payload(state, staged, seqs)
        transactions = [Transaction(app, version) for app, version in versions.items()]
        transactions += [Transaction(f.app_id, f.expected + 1) for f in self._fences_of(table)]
        return CommitProperties(
            custom_metadata={"amp": payload},
            app_transactions=transactions or None,
            max_commit_retries=self.max_commit_retries,
        )

    def _fences_of(self, table: str) -> list[Fence]:
        location = self.location(table)
        return [f for s, f in self._fences.items() if self.location(s.table) == location]

    def _check_fences(self, table: str, delta: DeltaTable) -> None:
        for fence in self._fences_of(table):
            fence.check(delta.transaction_version(fence.app_id), self.describe())

    def _compact(self, table: str, delta: DeltaTable) -> None:
        """delta-rs's OPTIMIZE compact, best effort: a conflict with a concurrent writer
        only postpones it (the files are compacted at a later turn)."""
        try:
            metrics = delta.optimize.compact(target_size=self.target_file_size)
            log.info("compacted %s: %s", self.describe_table(table), metrics)
        except (CommitFailedError, DeltaError) as exc:
            log.warning("compacting %s failed (retried later): %s", table, exc)

    # -- state --------------------------------------------------------------------------

    @property
    def staged_documents(self) -> dict[DocKey, Document | None] | None:
        return self._staged

    def state_store(self, prefix: str) -> DocumentStateStore:
        """Checkpoints and processed ranges inside the table's commits
        (``amp.loaders.delta.state``)."""
        return DocumentStateStore(DeltaDocuments(self), prefix)
