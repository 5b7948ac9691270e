"""Checkpoint and idempotency inside a grouped unit (a load catching up), on the real
PostgreSQL: the unit's rows, processed ranges and checkpoint commit in one transaction
(its state in one statement), a unit skips the per-microbatch duplicate check only
while nothing lies after it, and a failure of the state statement rolls the whole unit
back (a transient one replays it whole)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from loop_support import PG, Admin, drain, microbatch, scripted_load, table_rows

from amp.errors import FatalLoadError
from amp.flight.scripted import PAUSE
from amp.loaders.postgresql import PostgreSQLLoader
from amp.loop import CommitGrouping, StreamingLoad
from amp.streaming.checkpoint import CheckpointConfig
from amp.streaming.idempotency import IdempotencyConfig
from amp.streaming.results import LoadResult

pytestmark = pytest.mark.timeout(60)

IDEMPOTENT = IdempotencyConfig(enabled=True)
NO_CHECKPOINT = CheckpointConfig()
# Four microbatches the server has ready at once: one unit.
FOUR = [*microbatch(0, 1), *microbatch(2, 3), *microbatch(4, 5), *microbatch(6, 7), PAUSE]
ALL_ROWS = [(block, block * 10) for block in range(8)]


def _ranges(admin: Admin, table: str, prefix: str = "amp_") -> list[tuple[int, int, str]]:
    """(start, end, xid of the writing transaction) of ``table``'s processed ranges."""
    rows = admin.execute(
        f"SELECT start_block, end_block, xmin::text FROM {prefix}processed_ranges "
        "WHERE connection_name = 'scripted' AND table_name = %s ORDER BY 1",
        (table,),
    ).fetchall()
    return [(int(a), int(b), str(x)) for a, b, x in rows]  # type: ignore[call-overload]


def _checkpoint(admin: Admin, table: str, prefix: str = "amp_") -> tuple[int, str] | None:
    """(end block, xid of the writing transaction) of ``table``'s checkpoint."""
    row = admin.execute(
        f"SELECT checkpoint_data, xmin::text FROM {prefix}checkpoints "
        "WHERE connection_name = 'scripted' AND table_name = %s",
        (table,),
    ).fetchone()
    if row is None:
        return None
    data, xid = row
    return int(data["ranges"][0]["end"]), str(xid)  # type: ignore[index]


def _row_xids(admin: Admin, table: str, first_block: int) -> set[str]:
    rows = admin.execute(
        f'SELECT DISTINCT xmin::text FROM "{table}" WHERE _block_num >= %s', (first_block,)
    ).fetchall()
    return {str(row[0]) for row in rows}


def test_a_unit_commits_rows_ranges_and_checkpoint_in_one_transaction(
    admin: Admin, table: str
) -> None:
    load, _, _ = scripted_load(table, [FOUR], CommitGrouping(), idempotency=IDEMPOTENT)
    assert drain(load, 4) == ["load"] * 4
    assert table_rows(admin, table) == ALL_ROWS
    ranges = _ranges(admin, table)
    assert [(a, b) for a, b, _ in ranges] == [(0, 1), (2, 3), (4, 5), (6, 7)]
    checkpoint = _checkpoint(admin, table)
    assert checkpoint is not None and checkpoint[0] == 7
    xids = _row_xids(admin, table, 0) | {x for _, _, x in ranges} | {checkpoint[1]}
    assert len(xids) == 1, f"the unit was written by several transactions: {xids}"


def test_rows_after_the_second_microbatch_keep_each_microbatch_deleting_first(
    admin: Admin, table: str
) -> None:
    """An earlier load without idempotency left a row in every block: none of the unit's
    microbatches may skip the delete, or blocks 4..7 would hold their rows twice."""
    earlier, _, _ = scripted_load(table, [FOUR], CommitGrouping(), checkpoint=NO_CHECKPOINT)
    drain(earlier, 4)
    load, _, _ = scripted_load(
        table, [FOUR], CommitGrouping(), checkpoint=NO_CHECKPOINT, idempotency=IDEMPOTENT
    )
    assert drain(load, 4) == ["load"] * 4
    assert table_rows(admin, table) == ALL_ROWS


def test_ranges_processed_after_the_second_microbatch_keep_the_duplicate_check(
    admin: Admin, table: str
) -> None:
    """Rows of blocks 4..7 gone, their ranges still recorded: the later microbatches are
    still duplicates (skipped, not written again)."""
    config = {"checkpoint": NO_CHECKPOINT, "idempotency": IDEMPOTENT}
    first, _, _ = scripted_load(table, [FOUR], CommitGrouping(), **config)
    drain(first, 4)
    admin.execute(f'DELETE FROM "{table}" WHERE _block_num >= 4')
    again, _, _ = scripted_load(table, [FOUR], CommitGrouping(), **config)
    assert drain(again, 4) == ["skip_duplicate"] * 4
    assert table_rows(admin, table) == ALL_ROWS[:4]


@pytest.fixture
def refusing_prefix(admin: Admin) -> Iterator[tuple[str, str]]:
    """A state-table prefix whose processed-ranges table has a trigger (made by the test
    with ``refuse``) and a sequence counting its calls; everything dropped at the end."""
    prefix = f"t{uuid.uuid4().hex[:10]}_"
    loader = PostgreSQLLoader(PG, connection_name="scripted")
    loader.connect()
    store = loader.state_store(prefix)
    with loader.transaction():
        store.create_checkpoint_tables()
        store.create_processed_ranges_table()
    loader.close()
    admin.execute(f"CREATE SEQUENCE {prefix}calls")
    yield prefix, f"{prefix}processed_ranges"
    for name in ("checkpoints", "checkpoint_history", "processed_ranges"):
        admin.execute(f"DROP TABLE IF EXISTS {prefix}{name}")
    admin.execute(f"DROP FUNCTION IF EXISTS {prefix}refuse() CASCADE")
    admin.execute(f"DROP SEQUENCE IF EXISTS {prefix}calls")


def _refuse_marks_from_block_4(admin: Admin, prefix: str, sqlstate: str, times: int) -> None:
    """The first ``times`` inserts of a processed range starting at block 4 or later fail
    with ``sqlstate`` (the sequence is not rolled back with the failed transaction)."""
    admin.execute(
        f"CREATE FUNCTION {prefix}refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"IF NEW.start_block >= 4 AND nextval('{prefix}calls') <= {times} THEN "
        f"RAISE EXCEPTION 'refused by the test' USING ERRCODE = '{sqlstate}'; END IF; "
        "RETURN NEW; END $$"
    )
    admin.execute(
        f"CREATE TRIGGER refuse BEFORE INSERT ON {prefix}processed_ranges "
        f"FOR EACH ROW EXECUTE FUNCTION {prefix}refuse()"
    )


# 0..1 commits alone (the server pauses), then 2..7 are one unit.
ONE_THEN_THREE = [*microbatch(0, 1), PAUSE, *FOUR[2:]]


def _load_with_state_in(table: str, prefix: str) -> StreamingLoad:
    load, _, _ = scripted_load(
        table,
        [ONE_THEN_THREE],
        CommitGrouping(),
        checkpoint=CheckpointConfig(enabled=True, table_prefix=prefix),
        idempotency=IdempotencyConfig(enabled=True, table_prefix=prefix),
    )
    return load


def test_a_failing_state_statement_rolls_the_whole_unit_back(
    admin: Admin, table: str, refusing_prefix: tuple[str, str]
) -> None:
    prefix, _ = refusing_prefix
    _refuse_marks_from_block_4(admin, prefix, "P0001", times=1_000)  # permanent
    load = _load_with_state_in(table, prefix)
    results: list[LoadResult] = []
    try:
        with pytest.raises(FatalLoadError, match="refused by the test"):
            for result in load.results():
                results.append(result)
                assert len(results) <= 2, "the unit was committed despite its failed state"
    finally:
        load.target.loader.close()
    assert [r.metadata["operation"] for r in results] == ["load", "fatal"]
    # Nothing of 2..7: not the rows, not the range 2..3 marked in the same statement.
    assert table_rows(admin, table) == ALL_ROWS[:2]
    assert [(a, b) for a, b, _ in _ranges(admin, table, prefix)] == [(0, 1)]
    checkpoint = _checkpoint(admin, table, prefix)
    assert checkpoint is not None and checkpoint[0] == 1


def test_a_transient_failure_of_the_state_statement_replays_the_unit_whole(
    admin: Admin, table: str, refusing_prefix: tuple[str, str]
) -> None:
    prefix, _ = refusing_prefix
    _refuse_marks_from_block_4(admin, prefix, "40001", times=1)  # a serialization failure
    load = _load_with_state_in(table, prefix)
    backoff = load.destination.backoff
    backoff.config = backoff.config.__class__(initial_backoff_ms=1, max_backoff_ms=1)
    assert drain(load, 4) == ["load"] * 4
    # The refused mark of 4..5, then the replay's marks of 4..5 and 6..7.
    assert admin.execute(f"SELECT last_value FROM {prefix}calls").fetchone() == (3,)
    assert table_rows(admin, table) == ALL_ROWS
    ranges = _ranges(admin, table, prefix)
    assert [(a, b) for a, b, _ in ranges] == [(0, 1), (2, 3), (4, 5), (6, 7)]
    checkpoint = _checkpoint(admin, table, prefix)
    assert checkpoint is not None and checkpoint[0] == 7
    replayed = _row_xids(admin, table, 2) | {x for _, _, x in ranges[1:]} | {checkpoint[1]}
    assert len(replayed) == 1, f"the replayed unit was written by several transactions: {replayed}"
