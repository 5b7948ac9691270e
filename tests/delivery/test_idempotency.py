"""Idempotency (resilience guide §5): replayed ranges are skipped, reorgs forget the ranges
of replaced blocks, batch hashes verify content, old ranges are cleaned up, the
configuration is checked, and a failed duplicate lookup stops the load."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import duckdb
import psycopg
import pytest
from delivery_support import (
    Destination,
    assert_equals_chain,
    assert_processed_canonical,
    load_to_head,
)

from amp.client import Client, LoadResult
from amp.devserver import DevServer
from amp.errors import ConfigError, FatalLoadError
from amp.streaming.idempotency import DatabaseProcessedRangesStore
from amp.streaming.types import hex_hash
from kit import LOGS_QUERY, PG_DSN, block_range, canonical_count, operation

pytestmark = pytest.mark.timeout(60)

IDEMPOTENT = {"idempotency": {"enabled": True}}
GUIDE_COLUMNS = {
    "connection_name",
    "table_name",
    "network",
    "start_block",
    "end_block",
    "processed_at",
    "batch_hash",
}


@pytest.fixture
def srv95() -> Iterator[DevServer]:
    """95 blocks in microbatches of 10: the last range, 90..94, is a short one."""
    with DevServer(port=0, seed=9, initial_blocks=95, max_interval=10) as server:
        yield server


def ranges_of(results: list[LoadResult], kind: str) -> list[tuple[int, int]]:
    return [
        (block_range(r)["start"], block_range(r)["end"]) for r in results if operation(r) == kind
    ]


def test_replayed_ranges_are_skipped_even_when_the_tail_grew(
    srv95: DevServer, dest: Destination
) -> None:
    config = dest.config(**IDEMPOTENT)  # no checkpoint: a restart streams from block 0
    first = load_to_head(srv95, dest, config)
    assert ranges_of(first.results, "load")[-1] == (90, 94)
    assert GUIDE_COLUMNS | {"end_hash"} <= set(dest.columns("amp_processed_ranges"))
    loaded = {
        (block_range(r)["start"], block_range(r)["end"], block_range(r)["hash"])
        for r in first.results
    }
    assert {(a, b, h) for a, b, h, _ in dest.processed()} == loaded

    srv95.chain.mine(10)  # the old tail 90..94 now lies inside the range 90..99
    second = load_to_head(srv95, dest, config)
    skipped = [r for r in second.results if operation(r) == "skip_duplicate"]
    assert [(block_range(r)["start"], block_range(r)["end"]) for r in skipped] == [
        (n, n + 9) for n in range(0, 90, 10)
    ]
    assert all(r.rows_loaded == 0 and r.success for r in skipped)
    assert ranges_of(second.results, "load") == [(90, 99), (100, 104)]
    assert second.loads()[0].rows_loaded == canonical_count(srv95.chain, 90, 99)
    assert_equals_chain(dest, srv95.chain)

    srv95.chain.mine(1)  # a third run skips up to the new 90..99; 100..104 grew again
    third = load_to_head(srv95, dest, config)
    assert ranges_of(third.results, "skip_duplicate")[-1] == (90, 99)
    assert len(ranges_of(third.results, "skip_duplicate")) == 10
    assert ranges_of(third.results, "load") == [(100, 105)]
    assert_equals_chain(dest, srv95.chain)


def test_reorg_forgets_processed_ranges_so_same_numbers_load_again(
    srv: DevServer, dest: Destination
) -> None:
    config = dest.config(**IDEMPOTENT)
    before: list[tuple[int, int, str, str | None]] = []

    def replace_last_microbatch(chain: Any) -> None:
        before.extend(dest.processed())
        chain.reorg(10)  # blocks 90..99: the same numbers as the last microbatch

    run = load_to_head(srv, dest, config, actions=[replace_last_microbatch])
    old = next(r for r in before if r[:2] == (90, 99))
    assert old[2] != hex_hash(srv.chain.canonical_hash(99)), "recorded with the replaced hash"
    assert [operation(r) for r in run.results[-2:]] == ["reorg", "load"]
    again = run.results[-1]
    assert (block_range(again)["start"], block_range(again)["end"]) == (90, 99)
    assert again.rows_loaded == canonical_count(srv.chain, 90, 99) > 0
    after = dest.processed()
    assert [r for r in after if r[1] >= 90] == [
        (90, 99, hex_hash(srv.chain.canonical_hash(99)), None)
    ], "the reorg must remove the processed range of the replaced blocks"
    assert_processed_canonical(dest, srv.chain)
    assert_equals_chain(dest, srv.chain)

    srv.chain.mine(1)  # a restart from block 0 skips every range, the new 90..99 too
    restart = load_to_head(srv, dest, config)
    assert ranges_of(restart.results, "load") == [(100, 100)]
    assert_equals_chain(dest, srv.chain)


def test_same_numbers_with_a_new_hash_are_not_a_duplicate(
    srv: DevServer, dest: Destination
) -> None:
    """A reorg while stopped, without checkpoints: nothing tells the load about it, only
    the end hash of the replayed range differs from the processed one."""
    config = dest.config(**IDEMPOTENT)
    load_to_head(srv, dest, config)
    srv.chain.reorg(15)  # blocks 85..99: the ranges 80..89 and 90..99 change hash
    restart = load_to_head(srv, dest, config)
    assert ranges_of(restart.results, "load") == [(80, 89), (90, 99)]
    assert len(ranges_of(restart.results, "skip_duplicate")) == 8
    assert_equals_chain(dest, srv.chain)


def test_verification_hash_detects_different_content(
    srv: DevServer, dest: Destination, amp_logs: pytest.LogCaptureFixture
) -> None:
    config = dest.config(idempotency={"enabled": True, "verification_hash": True})
    load_to_head(srv, dest, config)
    processed = dest.processed()
    assert len(processed) == 10
    for start, end, _, digest in processed:
        assert digest is not None and re.fullmatch(r"[0-9a-f]{64}", digest), (start, end, digest)
    assert len({digest for *_, digest in processed}) == 10

    dest.execute(
        "UPDATE amp_processed_ranges SET batch_hash = %s "
        "WHERE connection_name = %s AND table_name = %s AND start_block = 20",
        ("0" * 64, dest.name, dest.table),
    )
    # The same chain from a server that splits microbatches into messages of 7 rows:
    # the hash is of the rows, not of how they were sent.
    amp_logs.clear()
    with DevServer(
        port=0, seed=5, initial_blocks=101, max_interval=10, rows_per_message=7
    ) as other:
        assert other.chain.canonical_hash(99) == srv.chain.canonical_hash(99)
        restart = load_to_head(other, dest, config)
        assert_equals_chain(dest, other.chain)
    assert len(ranges_of(restart.results, "skip_duplicate")) == 10
    warnings = [
        r.getMessage()
        for r in amp_logs.records
        if r.levelname == "WARNING" and "content" in r.getMessage()
    ]
    assert len(warnings) == 1, f"one tampered range, warnings: {warnings}"
    assert "different content" in warnings[0]
    assert "20-29" in warnings[0]


def backdate(dest: Destination, connection: str, starts: list[int], days: int) -> None:
    for start in starts:
        dest.execute(
            "UPDATE amp_processed_ranges SET processed_at = processed_at - "
            f"INTERVAL '{days} days' "
            "WHERE connection_name = %s AND table_name = %s AND start_block = %s",
            (connection, dest.table, start),
        )


def test_cleanup_old_ranges_api(srv: DevServer, dest: Destination) -> None:
    load_to_head(srv, dest, dest.config(**IDEMPOTENT))
    # Another connection's old range of the same table name must stay.
    other = f"other_{uuid.uuid4().hex[:8]}"
    dest.execute(
        "INSERT INTO amp_processed_ranges (connection_name, table_name, network, start_block, "
        "end_block, end_hash, processed_at, batch_hash) "
        "SELECT %s, table_name, network, start_block, end_block, end_hash, "
        "processed_at - INTERVAL '90 days', batch_hash FROM amp_processed_ranges "
        "WHERE connection_name = %s AND table_name = %s",
        (other, dest.name, dest.table),
    )
    backdate(dest, dest.name, [0, 10, 20], 40)
    backdate(dest, dest.name, [30, 40], 29)

    if dest.kind == "postgresql":
        db_connection: Any = psycopg.connect(PG_DSN)  # not autocommit: the store commits
    else:
        assert dest.duckdb_path is not None
        db_connection = duckdb.connect(str(dest.duckdb_path))
    try:
        store = DatabaseProcessedRangesStore({"table_prefix": "amp_"}, db_connection)
        deleted = store.cleanup_old_ranges(dest.name, dest.table, days=30)
    finally:
        db_connection.close()

    assert deleted == 3
    assert [r[0] for r in dest.processed()] == list(range(30, 100, 10))
    rows = dest.query(
        "SELECT count(*) FROM amp_processed_ranges WHERE connection_name = %s", (other,)
    )
    assert rows[0][0] == 10, "another connection's ranges were deleted"


def test_cleanup_days_runs_at_load_start(srv: DevServer, dest: Destination) -> None:
    config = dest.config(
        checkpoint={"enabled": True}, idempotency={"enabled": True, "cleanup_days": 30}
    )
    load_to_head(srv, dest, config)
    backdate(dest, dest.name, [0, 10, 20], 31)
    backdate(dest, dest.name, [30], 29)
    srv.chain.mine(3)
    load_to_head(srv, dest, config)
    assert [r[0] for r in dest.processed()] == [*range(30, 100, 10), 100]
    assert_equals_chain(dest, srv.chain)


@pytest.mark.parametrize(
    ("idempotency", "expected"),
    [
        (
            {"enabled": True, "verfication_hash": True},
            r"unknown key 'verfication_hash' in idempotency config "
            r"\(did you mean 'verification_hash'\?\)",
        ),
        (
            {"enabled": True, "mode": "exact"},
            r"mode.*must be one of auto, transactional, tracking, got 'exact'",
        ),
        ({"enabled": True, "cleanup_days": -1}, r"cleanup_days.*>= 0"),
    ],
    ids=["unknown-key", "mode-exact", "cleanup-days-negative"],
)
def test_idempotency_config_errors(
    dest: Destination, idempotency: dict[str, Any], expected: str
) -> None:
    client = Client("grpc://127.0.0.1:1")
    try:
        with pytest.raises(ConfigError, match=expected):
            client.configure_connection(dest.name, dest.kind, dest.config(idempotency=idempotency))
    finally:
        client.close()


def test_features_are_off_by_default_and_auto_is_transactional(dest: Destination) -> None:
    client = Client("grpc://127.0.0.1:1")
    try:
        client.configure_connection(dest.name, dest.kind, dest.config())
        loader = client._get_loader(dest.name)
        assert not loader.checkpoint_config.enabled
        assert not loader.idempotency_config.enabled
        client.configure_connection(dest.name, dest.kind, dest.config(**IDEMPOTENT))
        loader = client._get_loader(dest.name)
        assert loader.idempotency_config.mode == "auto"
        assert loader.idempotency_mode == "transactional"
    finally:
        client.close()


def break_between_microbatches(
    srv: DevServer, dest: Destination, prefix: str, breaker: Callable[[], None]
) -> list[LoadResult]:
    """An idempotent load whose processed-ranges table ``breaker`` breaks right after the
    first microbatch; returns the results up to the FatalLoadError (which must come)."""
    config = dest.config(idempotency={"enabled": True, "table_prefix": prefix})
    client = Client(srv.url)
    results: list[LoadResult] = []
    try:
        client.configure_connection(dest.name, dest.kind, config)
        run = client.sql(LOGS_QUERY).load(dest.name, dest.table, stream=True)
        try:
            with pytest.raises(FatalLoadError):
                for result in run:
                    results.append(result)
                    if len(results) == 1:
                        assert result.success and operation(result) == "load"
                        breaker()
                    assert len(results) <= 2, "the load went on without its duplicate check"
        finally:
            run.close()
    finally:
        client.close()
    return results


def assert_stopped_after_first(
    results: list[LoadResult], dest: Destination, srv: DevServer
) -> None:
    """The second microbatch failed, and nothing of it (or after it) was written."""
    assert len(results) == 2, [r.metadata for r in results]
    failed = results[1]
    assert failed.success is False
    assert failed.rows_loaded == 0
    assert failed.metadata.get("operation") == "fatal"
    assert "delivery state statement" in (failed.error or ""), failed.error
    assert_equals_chain(dest, srv.chain, upto=block_range(results[0])["end"])


def test_dropped_processed_ranges_table_stops_the_load(srv: DevServer, dest: Destination) -> None:
    prefix = f"amp_t_{uuid.uuid4().hex[:12]}_"
    dest.created.append(f"{prefix}processed_ranges")

    def drop() -> None:
        dest.execute(f"DROP TABLE {prefix}processed_ranges")

    results = break_between_microbatches(srv, dest, prefix, drop)
    assert_stopped_after_first(results, dest, srv)
    assert f"{prefix}processed_ranges" in (results[1].error or "")


def test_unsearchable_processed_ranges_stop_the_load(srv: DevServer, pg_dest: Destination) -> None:
    """The table replaced by one whose start_block is text: the lookup (start_block <= n)
    fails while marking a range (an INSERT) would still work, so a load that took the
    failed lookup for "not processed" would go on loading."""
    prefix = f"amp_t_{uuid.uuid4().hex[:12]}_"
    table = f"{prefix}processed_ranges"
    pg_dest.created.append(table)

    def replace() -> None:
        pg_dest.execute(f"DROP TABLE {table}")
        pg_dest.execute(
            f"CREATE TABLE {table} (connection_name VARCHAR(255) NOT NULL, table_name "
            "VARCHAR(255) NOT NULL, network VARCHAR(50) NOT NULL, start_block VARCHAR(20) NOT "
            "NULL, end_block BIGINT NOT NULL, end_hash VARCHAR(66) NOT NULL DEFAULT '', "
            "processed_at TIMESTAMP NOT NULL, batch_hash VARCHAR(64))"
        )

    results = break_between_microbatches(srv, pg_dest, prefix, replace)
    assert_stopped_after_first(results, pg_dest, srv)
