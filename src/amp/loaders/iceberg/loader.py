"""Iceberg loader (pyiceberg): each unit of work is ONE catalog commit holding its block
deletes, its rows and its delivery state, so readers and crashes see all of it or none.

Why buffered: an Iceberg commit swaps the table's metadata once; there is no open
transaction on the catalog to write into as rows arrive. So ``begin()`` opens a buffer,
``write()`` adds the unit's Arrow rows (cast to the stored types, ``amp.loaders.
iceberg.types``), ``delete_blocks()`` records a block range to delete (counting the rows
it will remove, exactly, from the committed table and the buffer), the state store stages
its documents, and ``commit()`` builds one pyiceberg ``Transaction`` on the table's latest
metadata: a delete with a row filter (``block_column`` in the ranges), an append of the
rows (always, even of none, so every unit leaves one snapshot whose summary carries its
checkpoint), and the checkpoint as a table property (``amp.loaders.iceberg.state``).
``rollback()`` drops the buffer; nothing reached the table.

Concurrency: the catalog accepts a commit only if the table's current snapshot is still
the one the transaction was built on. When another writer (a parallel load's other
worker) committed in between, pyiceberg raises CommitFailedException and the loader
builds the transaction again on the new metadata, up to ``commit_retries`` times (amp
sets the table's own ``commit.retry.num-retries`` to 0, so pyiceberg never replays a
transaction amp did not build); after that the error is transient and the loop replays
the unit. Deletes are by block range and workers own disjoint ranges, so rebuilding is
exact. A reorg's revert is its own unit: one delete-with-row-filter commit carrying the
new checkpoint.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import pyarrow as pa
import pyarrow.compute as pc

from amp.errors import ConfigError, DestinationError
from amp.loaders.base import DataLoader, LoadMode
from amp.loaders.blocks import RANGE_END, RANGE_START
from amp.loaders.iceberg.claims import StreamClaims, sqlite_path
from amp.loaders.iceberg.config import IcebergSettings, settings, table_identifier
from amp.loaders.iceberg.errors import IcebergErrorClassifier, failure
from amp.loaders.iceberg.state import CommitState, SummaryLog, data_table, is_plan
from amp.loaders.iceberg.store import IcebergDocuments
from amp.loaders.iceberg.types import stored_schema, to_stored
from amp.loaders.ownership import Stream
from amp.streaming.state_documents import DocKey, Document, DocumentStateStore
from amp.streaming.types import BlockRange

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog
    from pyiceberg.expressions import BooleanExpression
    from pyiceberg.table import Table

log = logging.getLogger("amp.loaders.iceberg.loader")

# Set on every table amp creates or loads into (see the module docstring).
NO_PYICEBERG_RETRIES = {"commit.retry.num-retries": "0"}
# Defaults of a table amp creates (``table_properties`` override them): merge manifests
# once there are 10, so that a table of many small commits keeps few manifests to read
# per scan and commit (pyiceberg's own default, no merging, makes every commit slower
# than the one before: docs/benchmarks.md, Iceberg).
CREATED_TABLE_DEFAULTS = {
    "commit.manifest-merge.enabled": "true",
    "commit.manifest.min-count-to-merge": "10",
}


@dataclass
class _Unit:
    """The open transaction: what its one commit will hold."""

    table: str | None = None
    rows: list[pa.Table] = field(default_factory=list)
    deletes: list[tuple[str, int, int]] = field(default_factory=list)
    documents: dict[DocKey, Document | None] = field(default_factory=dict)
    # The snapshot the deletes were counted on, and whether it held any of their rows:
    # a commit built on that same snapshot need not plan a delete that removes nothing.
    counted_on: int | None = None
    counted_rows: bool = False

    def deletes_nothing_on(self, snapshot_id: int | None) -> bool:
        """Whether the deletes are known to match no row of snapshot ``snapshot_id``."""
        if snapshot_id is None:
            return True  # a table without a snapshot has no rows
        return self.counted_on == snapshot_id and not self.counted_rows

    def use(self, table: str) -> None:
        if self.table not in (None, table):
            raise DestinationError(
                f"one Iceberg commit holds one table; this unit has {self.table!r}, not {table!r}"
            )
        self.table = table

    @property
    def empty(self) -> bool:
        return not self.rows and not self.deletes and not self.documents


def _compare(kind: str, column: str, value: int) -> BooleanExpression:
    """``column <kind> value`` as a pyiceberg predicate (its classes take the column
    name and the literal positionally; their pydantic signatures do not say so)."""
    from pyiceberg import expressions

    predicate: Any = getattr(expressions, kind)
    return cast("BooleanExpression", predicate(column, value))


def blocks_between(column: str, start: int, end: int) -> BooleanExpression:
    """The row filter ``start <= column <= end``: a block range's rows."""
    from pyiceberg.expressions import And

    return And(
        _compare("GreaterThanOrEqual", column, start), _compare("LessThanOrEqual", column, end)
    )


def _outside(values: pa.Array, ranges: list[tuple[int, int]]) -> pa.Array:
    """A mask: True where a value lies in none of ``ranges``."""
    keep = pa.array([True] * len(values), type=pa.bool_())
    for start, end in ranges:
        inside = pc.and_(pc.greater_equal(values, start), pc.less_equal(values, end))
        keep = pc.and_(keep, pc.invert(pc.fill_null(inside, False)))
    return keep


class IcebergLoader(DataLoader[dict[str, Any]]):
    """Loads into Apache Iceberg tables through a pyiceberg catalog. Keys: catalog_config
    (required), catalog_name, namespace (default 'amp'), partition_spec,
    table_properties, timestamp_ns ('exact' or 'truncate'), commit_retries,
    max_snapshots."""

    loader_type = "iceberg"
    transactional = True
    finds_range_starts = True
    error_classifier = IcebergErrorClassifier
    config_keys = frozenset(
        {
            "catalog_config",
            "catalog_name",
            "namespace",
            "partition_spec",
            "table_properties",
            "timestamp_ns",
            "commit_retries",
            "max_snapshots",
        }
    )

    def __init__(self, config: Mapping[str, Any], connection_name: str = "") -> None:
        super().__init__(config, connection_name)
        if importlib.util.find_spec("pyiceberg") is None:
            raise ConfigError(
                "the iceberg loader needs pyiceberg with its SQL catalog: install "
                "amp-python[iceberg]"
            )
        self.settings: IcebergSettings = settings(self.config)
        self._catalog: Catalog | None = None
        self._tables: dict[str, Table] = {}
        self._logs: dict[str, SummaryLog] = {}
        self._schemas: dict[str, pa.Schema] = {}
        self._unit: _Unit | None = None
        self._contended: set[str] = set()  # tables other writers commit to meanwhile
        self._claims = StreamClaims(self.settings.sql_uri, self.describe())

    def describe(self) -> str:
        shown = self.settings.catalog_shown
        where = shown.get("uri") or shown.get("warehouse") or self.settings.catalog_name
        return f"iceberg {self.settings.catalog_type} catalog {where}"

    def describe_table(self, table: str) -> str:
        return f"table {'.'.join(self.identifier(table))}"

    def identifier(self, table: str) -> tuple[str, ...]:
        return table_identifier(self.settings.namespace, table)

    # -- connection ----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._catalog is not None

    def connect(self) -> None:
        if self._catalog is not None:
            return
        from pyiceberg.catalog import load_catalog

        database = sqlite_path(self.settings.sql_uri) if self.settings.sql_uri else None
        if database is not None:  # SQLite creates the file, not its directory
            database.parent.mkdir(parents=True, exist_ok=True)
        try:
            catalog = load_catalog(self.settings.catalog_name, **self.settings.catalog)
            catalog.create_namespace_if_not_exists(self.settings.namespace)
        except Exception as exc:
            raise failure(f"opening the catalog ({self.describe()})", exc) from exc
        self._catalog = catalog

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            self.connect()
        assert self._catalog is not None
        return self._catalog

    def disconnect(self) -> None:
        self._catalog = None
        self._tables.clear()

    def close(self) -> None:
        self.rollback()
        self.release_stream()
        self._catalog = None
        self._tables.clear()

    # -- one writer per stream ---------------------------------------------------------

    def claim_stream(self, table: str, worker_id: int) -> None:
        """A lock beside the catalog (see ``amp.loaders.iceberg.claims``)."""
        stream = Stream(self.connection_name, table, worker_id)
        self._claims.claim(stream, self.identifier(table), self)

    def release_stream(self) -> None:
        self._claims.release_all(self)

    # -- tables --------------------------------------------------------------------------

    def table(self, table: str, refresh: bool = False) -> Table | None:
        """The Iceberg table of amp table ``table`` (None when it does not exist),
        loaded again from the catalog with ``refresh``."""
        from pyiceberg.exceptions import NoSuchTableError

        if refresh or table not in self._tables:
            try:
                self._tables[table] = self.catalog.load_table(self.identifier(table))
            except NoSuchTableError:
                self._tables.pop(table, None)
                return None
            except Exception as exc:
                raise failure(f"loading {self.describe_table(table)}", exc) from exc
        return self._tables[table]

    def reload_state(self, table: str) -> None:
        self.table(table, refresh=True)

    def summary_log(self, table: str) -> SummaryLog:
        return self._logs.setdefault(table, SummaryLog())

    def prepare_table(
        self, table: str, schema: pa.Schema, mode: LoadMode, block_column: str
    ) -> None:
        if block_column not in schema.names:
            raise ConfigError(f"the rows of {table} have no block column {block_column!r}")
        target = stored_schema(schema)
        for entry in self.settings.partition_spec:
            if entry.column not in schema.names:
                raise ConfigError(
                    f"iceberg config['partition_spec'] names column {entry.column!r}, which the "
                    f"rows of {table} do not have; columns: {', '.join(schema.names)}"
                )
        existing = self.table(table, refresh=True)
        if existing is not None and mode is LoadMode.OVERWRITE:
            self._drop(table)
            existing = None
        if existing is None:
            existing = self._create(table, target)
        self._check_schema(table, existing, target)
        if existing.properties.get("commit.retry.num-retries") != "0":
            try:
                with existing.transaction() as txn:
                    txn.set_properties(NO_PYICEBERG_RETRIES)
            except Exception as exc:
                raise failure(f"setting properties of {self.describe_table(table)}", exc) from exc
            self.table(table, refresh=True)
        self._schemas[table] = target

    def _drop(self, table: str) -> None:
        try:
            self.catalog.purge_table(self.identifier(table))
        except Exception as exc:
            raise failure(f"dropping {self.describe_table(table)} (mode='overwrite')", exc) from exc
        self._tables.pop(table, None)
        self._logs.pop(table, None)

    def _create(self, table: str, target: pa.Schema) -> Table:
        from pyiceberg.exceptions import TableAlreadyExistsError

        properties = {
            **CREATED_TABLE_DEFAULTS,
            **self.settings.table_properties,
            **NO_PYICEBERG_RETRIES,
        }
        identifier = self.identifier(table)
        try:
            txn = self.catalog.create_table_transaction(identifier, target, properties=properties)
            if self.settings.partition_spec:
                with txn.update_spec() as spec:
                    for entry in self.settings.partition_spec:
                        spec.add_field(entry.column, entry.transform, entry.name)
            txn.commit_transaction()
        except TableAlreadyExistsError:
            pass  # another worker of a parallel load created it first
        except ValueError as exc:
            raise ConfigError(
                f"iceberg config['partition_spec'] does not fit {table}: {exc}"
            ) from exc
        except Exception as exc:
            raise failure(f"creating {self.describe_table(table)}", exc) from exc
        log.info("Created Iceberg table %s", ".".join(identifier))
        created = self.table(table, refresh=True)
        assert created is not None
        return created

    def _check_schema(self, table: str, existing: Table, target: pa.Schema) -> None:
        from pyiceberg.io.pyarrow import _check_pyarrow_schema_compatible

        try:
            _check_pyarrow_schema_compatible(
                existing.schema(), target, format_version=existing.format_version
            )
        except ValueError as exc:
            raise ConfigError(
                f"the Iceberg table {'.'.join(self.identifier(table))} exists with columns the "
                f"query's rows do not fit: {exc}. Load into another table, or use "
                "mode='overwrite' to replace it"
            ) from exc

    # -- transactions --------------------------------------------------------------------

    def begin(self) -> None:
        if self._unit is not None:
            raise DestinationError("begin() while an Iceberg unit is open")
        self._unit = _Unit()

    def _open_unit(self, table: str) -> _Unit:
        if self._unit is None:
            raise DestinationError("write outside begin()/commit()")
        self._unit.use(table)
        return self._unit

    def staged(self, state_table: str) -> dict[DocKey, Document | None] | None:
        """The open unit's staged state documents (None outside a transaction)."""
        if self._unit is None:
            return None
        if not is_plan(state_table):
            self._unit.use(data_table(state_table))
        return self._unit.documents

    def write(
        self, table: str, batch: pa.RecordBatch, block_range: BlockRange | None = None
    ) -> int:
        unit = self._open_unit(table)
        target = self._schemas.get(table)
        if target is None:
            raise DestinationError(f"prepare_table({table!r}, ...) must come before write()")
        if batch.num_rows:
            rows = pa.Table.from_batches([batch])
            unit.rows.append(to_stored(rows, target, self.settings.timestamp_ns))
        return batch.num_rows

    def delete_blocks(self, table: str, block_column: str, start: int, end: int) -> int:
        """Record the delete for the commit; returns the rows it removes: the committed
        rows of the blocks not already being deleted by this unit, and its own buffered
        rows of them (dropped from the buffer now)."""
        unit = self._open_unit(table)
        pending = [(s, e) for column, s, e in unit.deletes if column == block_column]
        deleted = 0
        committed = self.table(table)
        snapshot = committed.current_snapshot() if committed is not None else None
        snapshot_id = snapshot.snapshot_id if snapshot is not None else None
        if committed is not None and snapshot is not None:
            values = self._scan_column(
                committed, block_column, blocks_between(block_column, start, end)
            )
            deleted += int(pc.sum(pc.cast(_outside(values, pending), pa.int64())).as_py() or 0)
            unit.counted_rows = unit.counted_rows or len(values) > 0
        if not unit.deletes:
            unit.counted_on = snapshot_id
        elif unit.counted_on != snapshot_id:
            unit.counted_on = None  # counted on two snapshots: the commit plans the delete
        kept: list[pa.Table] = []
        for rows in unit.rows:
            blocks = rows.column(block_column).combine_chunks()
            keep = pc.invert(
                pc.fill_null(
                    pc.and_(pc.greater_equal(blocks, start), pc.less_equal(blocks, end)), False
                )
            )
            remaining = rows.filter(keep)
            deleted += rows.num_rows - remaining.num_rows
            if remaining.num_rows:
                kept.append(remaining)
        unit.rows = kept
        unit.deletes.append((block_column, start, end))
        return deleted

    def _scan_column(self, table: Table, column: str, row_filter: BooleanExpression) -> pa.Array:
        """``column``'s values in the rows matching ``row_filter`` (files pruned by their
        column statistics first, so a range past the table's blocks reads no file)."""
        try:
            found = table.scan(row_filter=row_filter, selected_fields=(column,)).to_arrow()
        except Exception as exc:
            raise failure(f"reading {column} of {table.name()}", exc) from exc
        return found.column(column).combine_chunks()

    def has_rows_after(self, table: str, block_column: str, block: int) -> bool | None:
        unit = self._unit
        pending = [(s, e) for c, s, e in (unit.deletes if unit else []) if c == block_column]
        committed = self.table(table)
        if committed is not None and committed.current_snapshot() is not None:
            values = self._scan_column(
                committed, block_column, _compare("GreaterThan", block_column, block)
            )
            if pc.any(_outside(values, pending)).as_py():
                return True
        for rows in unit.rows if unit else []:
            if pc.any(pc.greater(rows.column(block_column), block)).as_py():
                return True
        return False

    def first_range_start(self, table: str, block: int) -> int | None:
        committed = self.table(table)
        if committed is None or committed.current_snapshot() is None:
            return None
        try:
            found = committed.scan(
                row_filter=_compare("GreaterThanOrEqual", RANGE_END, block),
                selected_fields=(RANGE_START, RANGE_END),
            ).to_arrow()
        except Exception as exc:
            raise failure(f"reading the ranges of {self.describe_table(table)}", exc) from exc
        if found.num_rows == 0:
            return None
        first = pc.index(found.column(RANGE_END), pc.min(found.column(RANGE_END))).as_py()
        return int(found.column(RANGE_START)[first].as_py())

    def commit(self) -> None:
        unit, self._unit = self._unit, None
        if unit is None:
            raise DestinationError("commit() without begin()")
        if unit.empty:
            return
        plans = {k: v for k, v in unit.documents.items() if is_plan(k[3])}
        ours = {k: v for k, v in unit.documents.items() if not is_plan(k[3])}
        if unit.table is not None and (unit.rows or unit.deletes or ours):
            self._commit_table(unit.table, unit, ours)
        if plans:
            IcebergDocuments(self).write_namespace(plans)

    def _commit_table(self, table: str, unit: _Unit, documents: dict[DocKey, Any]) -> None:
        from pyiceberg.exceptions import CommitFailedException

        state = CommitState.of(documents)
        # One chunk per column: pyiceberg writes a table of many small chunks slower.
        rows = pa.concat_tables(unit.rows).combine_chunks() if unit.rows else None
        attempts = self.settings.commit_retries + 1
        for attempt in range(1, attempts + 1):
            # The first attempt is built on the metadata this loader last saw (the catalog
            # refuses it if another commit came since), unless other writers commit to
            # this table too (a race was lost before): then on the catalog's latest.
            current = self.table(table, refresh=attempt > 1 or table in self._contended)
            if current is None:
                raise DestinationError(
                    f"{self.describe_table(table)} does not exist (dropped while loading?)"
                )
            try:
                self._commit_once(current, table, unit, rows, state)
                return
            except (CommitFailedException, KeyError) as exc:
                # KeyError: a property this commit removes was removed meanwhile (the
                # catalog applies the removal to its latest metadata): build it again.
                self._tables.pop(table, None)
                self._contended.add(table)
                if attempt == attempts:
                    raise failure(
                        f"committing to {self.describe_table(table)} ({attempts} attempts, "
                        "other writers committed each time)",
                        exc,
                    ) from exc
                log.debug("Commit to %s lost a race (attempt %d); rebuilding", table, attempt)
            except Exception as exc:
                # The cached metadata may be behind the table now (a commit whose outcome
                # is unknown may have landed): the replay reads it again.
                self._tables.pop(table, None)
                raise failure(f"committing to {self.describe_table(table)}", exc) from exc

    def _commit_once(
        self, current: Table, table: str, unit: _Unit, rows: pa.Table | None, state: CommitState
    ) -> None:
        from pyiceberg.expressions import Or

        txn = current.transaction()
        base = current.current_snapshot()
        if unit.deletes and not unit.deletes_nothing_on(base.snapshot_id if base else None):
            condition = blocks_between(*unit.deletes[0])
            for column, start, end in unit.deletes[1:]:
                condition = Or(condition, blocks_between(column, start, end))
            # Only when a data file may hold such rows (its column statistics say so):
            # a pre-delete of new blocks then costs nothing, and pyiceberg does not warn
            # of a delete that matched nothing.
            if any(True for _ in current.scan(row_filter=condition).plan_files()):
                txn.delete(condition)
        if rows is None:
            schema = self._schemas.get(table) or current.schema().as_arrow()
            rows = schema.empty_table()
        txn.append(rows, snapshot_properties=state.summary)
        if state.properties:
            txn.set_properties(state.properties)
        if state.removed_properties:
            present = [name for name in state.removed_properties if name in current.properties]
            if present:
                txn.remove_properties(*present)
        self._expire_oldest(current, txn)
        self._tables[table] = txn.commit_transaction()

    def _expire_oldest(self, current: Table, txn: Any) -> None:
        """Expire the table's oldest snapshots, in this same commit, so that it keeps at
        most ``max_snapshots`` (at most 20 per commit, so a table with a long history
        gets there over a few commits). Why: pyiceberg copies the table's whole metadata
        several times per commit, so a commit's cost grows with the number of snapshots
        (docs/benchmarks.md, Iceberg); checkpoints are table properties and survive."""
        limit = self.settings.max_snapshots
        snapshots = current.metadata.snapshots
        excess = len(snapshots) + 3 - limit  # a unit's commit adds up to 3
        if not limit or excess <= 0:
            return
        from pyiceberg.table.update.snapshot import ExpireSnapshots

        protected = {ref.snapshot_id for ref in current.metadata.refs.values()}
        oldest = sorted(
            (s for s in snapshots if s.snapshot_id not in protected),
            key=lambda s: (s.sequence_number, s.timestamp_ms),
        )
        doomed = [s.snapshot_id for s in oldest[: min(excess, 20)]]
        if doomed:
            ExpireSnapshots(txn).by_ids(doomed).commit()

    def rollback(self) -> None:
        self._unit = None

    def state_store(self, prefix: str) -> DocumentStateStore:
        """Checkpoints as table properties, processed ranges in snapshot summaries."""
        return DocumentStateStore(IcebergDocuments(self), prefix)
