"""One contract for every delivery-state store: PostgreSQL, DuckDB, Redis and Kafka.

Each case runs against the real destination through the loader's own begin / commit /
rollback, exactly as the load loop uses it: a transaction reads its own writes, a
rollback discards every kind of state write (checkpoint save, archive and delete,
processed-range mark and forget), a commit keeps them for the next process, and the
cleanup and reorg operations remove exactly what they name. A missing service fails the
test with a message (never skips).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from amp.loaders import DataLoader, loader_class
from amp.streaming.state import CheckpointWrite, RangeMark, RowsDelete
from amp.streaming.types import BlockRange
from kafkakit import loader_config, read_topic
from kit import PG_DSN, REDIS_DB, REDIS_HOST, REDIS_PORT, connect_redis, require_postgres

PREFIX = "amp_"
TABLE = "t"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
REDIS = {"host": REDIS_HOST, "port": REDIS_PORT, "db": REDIS_DB}
KINDS = ("postgresql", "duckdb", "redis", "kafka")


@dataclass
class Subject:
    """One destination under test: how to open a fresh loader on it (as a new process
    would) and how to read the archived checkpoints back from the destination itself."""

    kind: str
    connection: str
    config: dict[str, Any]
    history: Callable[[DataLoader, str], list[dict[str, Any]]]
    opened: list[DataLoader] = field(default_factory=list)

    def open(self) -> DataLoader:
        loader = loader_class(self.kind)(self.config, connection_name=self.connection)
        loader.connect()
        self.opened.append(loader)
        store = loader.state_store(PREFIX)
        loader.begin()
        store.create_checkpoint_tables()
        store.create_processed_ranges_table()
        loader.commit()
        return loader


def _pg_history(loader: DataLoader, connection: str) -> list[dict[str, Any]]:
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        rows = conn.execute(
            f"SELECT checkpoint_data FROM {PREFIX}checkpoint_history "
            "WHERE connection_name = %s AND table_name = %s ORDER BY archived_at",
            (connection, TABLE),
        ).fetchall()
    return [row[0] for row in rows]


def _duckdb_history(loader: DataLoader, connection: str) -> list[dict[str, Any]]:
    rows = loader.connection.execute(  # type: ignore[attr-defined]
        f"SELECT checkpoint_data FROM {PREFIX}checkpoint_history "
        "WHERE connection_name = ? AND table_name = ? ORDER BY archived_at",
        (connection, TABLE),
    ).fetchall()
    return [json.loads(row[0]) for row in rows]


def _redis_history(loader: DataLoader, connection: str) -> list[dict[str, Any]]:
    client = redis.Redis(**REDIS)
    try:
        raws = client.lrange(f"{PREFIX}checkpoint_history:{connection}:{TABLE}", 0, -1)
    finally:
        client.close()
    return [json.loads(raw) for raw in reversed(raws)]  # LPUSH: newest first


def _kafka_history(loader: DataLoader, connection: str) -> list[dict[str, Any]]:
    records = read_topic(loader.bootstrap_servers, loader.state_topic)  # type: ignore[attr-defined]
    history = []
    for record in records:
        key = json.loads(record.key or b"null")
        if key[:4] == [PREFIX, "checkpoint_history", connection, TABLE]:
            history.append(json.loads(record.value or b"null")["checkpoint"])
    return history


def _reachable(kind: str) -> None:
    if kind == "postgresql":
        require_postgres()
    elif kind == "redis":
        connect_redis().close()


@pytest.fixture(params=KINDS)
def subject(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Subject]:
    kind: str = request.param
    _reachable(kind)
    connection = f"contract_{uuid.uuid4().hex[:10]}"
    if kind == "postgresql":
        subject = Subject(kind, connection, {"dsn": PG_DSN}, _pg_history)
    elif kind == "duckdb":
        subject = Subject(
            kind, connection, {"database": str(tmp_path / "state.duckdb")}, _duckdb_history
        )
    elif kind == "redis":
        subject = Subject(kind, connection, dict(REDIS), _redis_history)
    else:
        bootstrap: str = request.getfixturevalue("bootstrap")
        subject = Subject(kind, connection, loader_config(bootstrap), _kafka_history)
    try:
        yield subject
    finally:
        for loader in subject.opened:
            loader.close()
        _forget_everything(subject)


def _forget_everything(subject: Subject) -> None:
    """Remove what the test left in the shared PostgreSQL and Redis (the DuckDB file and
    the Kafka state topic are the test's own)."""
    if subject.kind == "postgresql":
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            for name in ("checkpoints", "checkpoint_history", "processed_ranges"):
                conn.execute(
                    f"DELETE FROM {PREFIX}{name} WHERE connection_name = %s",
                    (subject.connection,),
                )
    elif subject.kind == "redis":
        client = redis.Redis(**REDIS)
        try:
            keys = list(client.scan_iter(f"{PREFIX}*:{subject.connection}:*"))
            if keys:
                client.delete(*keys)
        finally:
            client.close()


def _range(start: int, end: int, network: str = "eth") -> BlockRange:
    return BlockRange(network, start, end, hash=f"0x{end:04x}")


def _mark(loader: DataLoader, connection: str, block_range: BlockRange, when: datetime) -> None:
    loader.state_store(PREFIX).mark_processed(connection, TABLE, block_range, when, "digest")


def _committed(loader: DataLoader, write: Callable[[], Any]) -> Any:
    """``write`` in a transaction of its own, committed (as the load loop does)."""
    loader.begin()
    try:
        result = write()
        loader.commit()
    except BaseException:
        loader.rollback()
        raise
    return result


def _read(loader: DataLoader, read: Callable[[], Any]) -> Any:
    """``read`` in a transaction of its own, rolled back (as the load loop reads)."""
    loader.begin()
    try:
        return read()
    finally:
        loader.rollback()


def _ranges_in_txn(
    loader: DataLoader, connection: str, network: str = "eth"
) -> list[tuple[int, int]]:
    store = loader.state_store(PREFIX)
    found = store.overlapping_ranges(connection, TABLE, _range(0, 1_000, network))
    return sorted((r.start, r.end) for r in found)


def _ranges(loader: DataLoader, connection: str, network: str = "eth") -> list[tuple[int, int]]:
    return _read(loader, lambda: _ranges_in_txn(loader, connection, network))


def _checkpoint(loader: DataLoader, connection: str, worker_id: int = 0) -> dict[str, Any] | None:
    store = loader.state_store(PREFIX)
    return _read(loader, lambda: store.load_checkpoint(connection, TABLE, worker_id))


def test_a_transaction_reads_its_own_writes(subject: Subject) -> None:
    loader, conn = subject.open(), subject.connection
    store = loader.state_store(PREFIX)
    loader.begin()
    store.save_checkpoint(conn, TABLE, 0, {"n": 1}, T0)
    store.save_checkpoint(conn, TABLE, 1, {"n": 10}, T0)
    assert store.load_checkpoint(conn, TABLE, 0) == {"n": 1}
    _mark(loader, conn, _range(0, 9), T0)
    _mark(loader, conn, _range(10, 19), T0)
    found = store.overlapping_ranges(conn, TABLE, _range(5, 12))
    assert sorted((r.start, r.end, r.end_hash, r.batch_hash) for r in found) == [
        (0, 9, "0x0009", "digest"),
        (10, 19, "0x0013", "digest"),
    ]
    assert store.forget_ranges_from(conn, TABLE, "eth", 10) == 1
    assert _ranges_in_txn(loader, conn) == [(0, 9)]
    assert store.delete_checkpoint(conn, TABLE, 1) == 1
    assert store.load_checkpoint(conn, TABLE, 1) is None
    assert store.load_checkpoint(conn, TABLE, 0) == {"n": 1}
    loader.commit()
    assert _checkpoint(loader, conn) == {"n": 1}
    assert _checkpoint(loader, conn, 1) is None
    assert _ranges(loader, conn) == [(0, 9)]


def test_a_rollback_discards_every_state_write(subject: Subject) -> None:
    loader, conn = subject.open(), subject.connection
    store = loader.state_store(PREFIX)
    yesterday = datetime.now(UTC) - timedelta(days=1)
    _committed(loader, lambda: store.save_checkpoint(conn, TABLE, 0, {"n": 1}, T0))
    _committed(loader, lambda: _mark(loader, conn, _range(0, 9), yesterday))

    loader.begin()
    store.save_checkpoint(conn, TABLE, 0, {"n": 2}, T0 + timedelta(1), archive_previous=True)
    loader.rollback()
    assert _checkpoint(loader, conn) == {"n": 1}
    assert subject.history(loader, conn) == []

    for worker_id in (0, None):  # one worker's checkpoint, every worker's
        loader.begin()
        assert store.delete_checkpoint(conn, TABLE, worker_id) == 1
        assert store.load_checkpoint(conn, TABLE, 0) is None
        loader.rollback()
        assert _checkpoint(loader, conn) == {"n": 1}

    loader.begin()
    _mark(loader, conn, _range(10, 19), T0)
    loader.rollback()
    assert _ranges(loader, conn) == [(0, 9)]

    for forget in (
        lambda: store.forget_ranges_from(conn, TABLE, "eth", 0),
        lambda: store.forget_ranges(conn, TABLE),
        lambda: store.cleanup_old_ranges(conn, TABLE, days=0),
    ):
        loader.begin()
        assert forget() == 1
        assert _ranges_in_txn(loader, conn) == []
        loader.rollback()
        assert _ranges(loader, conn) == [(0, 9)]

    loader.close()  # and a new process finds only what was committed
    heir = subject.open()
    assert _checkpoint(heir, conn) == {"n": 1}
    assert _ranges(heir, conn) == [(0, 9)]


def test_a_commit_keeps_state_for_the_next_process(subject: Subject) -> None:
    loader, conn = subject.open(), subject.connection
    store = loader.state_store(PREFIX)
    loader.begin()
    store.save_checkpoint(conn, TABLE, 0, {"n": 1}, T0)
    store.save_checkpoint(conn, TABLE, 1, {"n": 10}, T0)
    _mark(loader, conn, _range(0, 9), T0)
    _mark(loader, conn, _range(10, 19), T0)
    _mark(loader, conn, _range(0, 50, "other"), T0)
    loader.commit()
    _committed(loader, lambda: store.delete_checkpoint(conn, TABLE, 1))
    _committed(loader, lambda: store.forget_ranges_from(conn, TABLE, "eth", 15))
    loader.close()

    heir = subject.open()
    again = heir.state_store(PREFIX)
    assert _checkpoint(heir, conn) == {"n": 1}
    assert _checkpoint(heir, conn, 1) is None
    assert _checkpoint(heir, "another") is None
    assert _ranges(heir, conn) == [(0, 9)]
    assert _ranges(heir, conn, "other") == [(0, 50)]
    assert _committed(heir, lambda: again.delete_checkpoint(conn, TABLE)) == 1
    assert _committed(heir, lambda: again.forget_ranges(conn, TABLE)) == 2
    heir.close()

    last = subject.open()
    assert _checkpoint(last, conn) is None
    assert _ranges(last, conn) == [] and _ranges(last, conn, "other") == []


def test_cleanup_deletes_only_old_ranges(subject: Subject) -> None:
    loader, conn = subject.open(), subject.connection
    store = loader.state_store(PREFIX)
    now = datetime.now(UTC)
    loader.begin()
    _mark(loader, conn, _range(0, 9), now - timedelta(days=40))
    _mark(loader, conn, _range(10, 19), now - timedelta(days=29))
    _mark(loader, conn, _range(20, 29), now)
    loader.commit()
    assert _committed(loader, lambda: store.cleanup_old_ranges(conn, TABLE, days=30)) == 1
    assert _ranges(loader, conn) == [(10, 19), (20, 29)]
    assert _committed(loader, lambda: store.cleanup_old_ranges(conn, TABLE, days=30)) == 0


def test_forget_ranges_from_a_reorg_point(subject: Subject) -> None:
    loader, conn = subject.open(), subject.connection
    store = loader.state_store(PREFIX)
    loader.begin()
    for start in (0, 10, 20):
        _mark(loader, conn, _range(start, start + 9), T0)
    _mark(loader, conn, _range(0, 50, "other"), T0)
    loader.commit()
    # Ranges ending at or after block 15 of "eth" go; "other" is another chain.
    assert _committed(loader, lambda: store.forget_ranges_from(conn, TABLE, "eth", 15)) == 2
    assert _ranges(loader, conn) == [(0, 9)]
    assert _ranges(loader, conn, "other") == [(0, 50)]
    assert _committed(loader, lambda: store.forget_ranges_from(conn, TABLE, "eth", 10)) == 0


def test_a_unit_saves_its_ranges_and_checkpoint_together(subject: Subject) -> None:
    loader, conn = subject.open(), subject.connection
    store = loader.state_store(PREFIX)
    marks = [RangeMark(_range(0, 9), T0, "a"), RangeMark(_range(10, 19), T0)]
    checkpoint = CheckpointWrite(0, {"n": 19}, T0)
    loader.begin()
    store.save_unit(conn, TABLE, marks, checkpoint)
    loader.rollback()
    assert _ranges(loader, conn) == [] and _checkpoint(loader, conn) is None
    _committed(loader, lambda: store.save_unit(conn, TABLE, marks, checkpoint))
    assert _ranges(loader, conn) == [(0, 9), (10, 19)]
    assert _checkpoint(loader, conn) == {"n": 19}
    _committed(loader, lambda: store.save_unit(conn, TABLE, [], CheckpointWrite(0, {"n": 1}, T0)))
    assert _checkpoint(loader, conn) == {"n": 1}
    _committed(loader, lambda: store.save_unit(conn, TABLE, [RangeMark(_range(20, 29), T0)], None))
    assert _ranges(loader, conn) == [(0, 9), (10, 19), (20, 29)]
    assert _checkpoint(loader, conn) == {"n": 1}
    after = [
        _read(loader, lambda block=block: store.ranges_after(conn, TABLE, "eth", block))
        for block in (25, 28, 29, 40)
    ]
    assert after == [True, True, False, False]
    assert _read(loader, lambda: store.ranges_after(conn, TABLE, "other", 0)) is False


def test_opening_a_range_deletes_its_rows_unless_it_is_processed_exactly(
    subject: Subject,
) -> None:
    loader, conn = subject.open(), subject.connection
    store = loader.state_store(PREFIX)
    _committed(loader, lambda: _mark(loader, conn, _range(0, 9), T0))
    deleted: list[tuple[int, int]] = []

    def opened(block_range: BlockRange) -> list[tuple[int, int]]:
        start, end = block_range.start, block_range.end
        delete = RowsDelete(lambda: deleted.append((start, end)) or 0)
        found = _read(loader, lambda: store.open_range(conn, TABLE, block_range, delete))
        return sorted((r.start, r.end) for r in found)

    assert opened(_range(0, 9)) == [(0, 9)]  # exactly processed: a duplicate keeps its rows
    assert opened(BlockRange("eth", 0, 9, hash="0xffff")) == [(0, 9)]  # another end hash
    assert opened(_range(5, 14)) == [(0, 9)]  # other boundaries
    assert opened(_range(10, 19)) == []
    assert deleted == [(0, 9), (5, 14), (10, 19)]
    assert _read(loader, lambda: store.open_range(conn, TABLE, _range(0, 9), None)) != []


def test_the_reorg_archive_keeps_history(subject: Subject) -> None:
    loader, conn = subject.open(), subject.connection
    store = loader.state_store(PREFIX)
    for n in (1, 2):  # no archive asked for
        _committed(loader, lambda n=n: store.save_checkpoint(conn, TABLE, 0, {"n": n}, T0))
    assert subject.history(loader, conn) == []
    for n in (3, 4):
        _committed(
            loader,
            lambda n=n: store.save_checkpoint(
                conn, TABLE, 0, {"n": n}, T0 + timedelta(n), archive_previous=True
            ),
        )
    assert _checkpoint(loader, conn) == {"n": 4}
    assert subject.history(loader, conn) == [{"n": 2}, {"n": 3}]
