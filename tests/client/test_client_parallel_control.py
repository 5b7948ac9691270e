"""Controlling a parallel streaming load: ``stop_on_error`` both ways, ``.stop()`` from
another thread, and ``max_block`` past the chain head (workers wait for their blocks).

Each ends with the destination holding exactly what the partitions say they committed,
and a rerun of the same load finishing the rest exactly (no duplicate, no gap).

``stop_on_error`` is made deterministic in PostgreSQL itself: a row trigger refuses
partition 2's rows from block 1100 on (a CHECK violation: permanent), and makes the rows
of partitions 0 and 1 wait for an advisory lock the test holds until partition 2 has
failed. So partitions 0 and 1 cannot commit anything before the failure.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import psycopg
import pytest
from oracle import Destination, connected

from amp.client import Client, LoadResult
from amp.devserver import DevServer
from amp.errors import FatalLoadError
from faultlib import log_trigger
from kit import PG_DSN as PG_CONNINFO
from kit import assert_table_equals_chain
from parallelkit import split

pytestmark = pytest.mark.timeout(120)

QUERY = "SELECT * FROM eth_firehose.logs"
LOCK = 730_110  # the advisory lock the rows of partitions 0 and 1 wait for


def with_checkpoints(destination: Destination) -> Destination:
    config = {
        **destination.config,
        "checkpoint": {"enabled": True},
        "idempotency": {"enabled": True},
        "commit_grouping": {"enabled": False},  # a commit per microbatch
    }
    return replace(destination, config=config)


def committed_blocks(run: Any) -> dict[int, tuple[int, int] | None]:
    """Partition → the blocks its worker committed (None: nothing)."""
    found: dict[int, tuple[int, int] | None] = {}
    for worker, state in run.partitions.items():
        partition = state.partition
        found[worker] = None if state.committed is None else (partition.start, state.committed)
    return found


def assert_holds_exactly(
    destination: Destination, table: str, srv: DevServer, spans: list[tuple[int, int]]
) -> None:
    """The table holds the canonical rows of ``spans`` (disjoint, ascending), once."""
    canonical = srv.chain.canonical_table("logs").to_pylist()
    expected = sorted(
        (row["block_num"], row["log_index"])
        for row in canonical
        if any(start <= row["block_num"] <= end for start, end in spans)
    )
    actual = sorted(
        (int(block), int(index))
        for block, index in destination.query(f'SELECT block_num, log_index FROM "{table}"')
    )
    assert actual == expected, f"{len(actual)} rows, expected {len(expected)} of {spans}"


# -- stop_on_error ------------------------------------------------------------------------


@contextmanager
def partition_2_refused_while_0_and_1_wait(
    client: Client, table: str
) -> Iterator[psycopg.Connection[Any]]:
    """Create ``table`` (a batch load of no rows), install the trigger, hold the lock."""
    list(client.sql(f"{QUERY} WHERE block_num < 0").load("dest", table))
    with psycopg.connect(PG_CONNINFO, autocommit=True) as admin:
        admin.execute(
            f'CREATE FUNCTION "{table}_gate"() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN '
            "IF NEW.block_num >= 1100 THEN RAISE EXCEPTION 'block % refused', NEW.block_num "
            "USING ERRCODE = '23514'; END IF; "
            f"IF NEW.block_num < 1000 THEN PERFORM pg_advisory_xact_lock_shared({LOCK}); "
            "END IF; RETURN NEW; END $$"
        )
        admin.execute(
            f'CREATE TRIGGER gate BEFORE INSERT ON "{table}" '
            f'FOR EACH ROW EXECUTE FUNCTION "{table}_gate"()'
        )
        admin.execute("SELECT pg_advisory_lock(%s)", (LOCK,))
        try:
            yield admin
        finally:
            admin.execute("SELECT pg_advisory_unlock_all()")
            admin.execute(f'DROP FUNCTION IF EXISTS "{table}_gate"() CASCADE')


@pytest.mark.parametrize("stop_on_error", [True, False], ids=["stop-on-error", "go-on"])
def test_stop_on_error_both_ways_then_a_rerun_finishes_exactly(
    pg_destination: Destination, stop_on_error: bool
) -> None:
    """Partitions 0..499, 500..999, 1000..1499. Partition 2 commits 1000..1099, then
    fails. With stop_on_error the others stop at their first microbatch boundary;
    without it they finish. The FatalLoadError names partition 2 (and the stopped ones)
    and says how to resume; the rerun, trigger gone, completes every partition."""
    table = pg_destination.new_table("par")
    config = split(3, 0, 1_499, stop_on_error=stop_on_error)
    destination = with_checkpoints(pg_destination)
    with (
        DevServer(port=0, seed=41, initial_blocks=1_600, max_interval=50) as srv,
        connected(srv, destination) as client,
    ):
        with partition_2_refused_while_0_and_1_wait(client, table) as admin:
            release = lambda: admin.execute("SELECT pg_advisory_unlock(%s)", (LOCK,))  # noqa: E731
            run = client.sql(QUERY).load("dest", table, stream=True, parallel_config=config)
            results: list[LoadResult] = []
            with (
                log_trigger(
                    "partition 2 (blocks 1000..1499) failed", release, logger="amp.parallel"
                ),
                pytest.raises(FatalLoadError) as failure,
            ):
                results.extend(run)
        message = str(failure.value)
        assert message.startswith("FATAL: 1 partition(s) of the parallel load")
        assert "partition 2 (blocks 1000..1499): FATAL: Permanent error" in message
        assert re.search(r"block 11\d\d refused", message), message
        assert "run the same load again (same ParallelConfig)" in message
        [fatal] = [r for r in results if not r.success]
        assert fatal.metadata["worker_id"] == 2
        statuses = {w: s.status for w, s in run.partitions.items()}
        spans = committed_blocks(run)
        assert spans[2] == (1_000, 1_099)
        if stop_on_error:
            assert statuses == {0: "stopped", 1: "stopped", 2: "failed"}
            assert "stopped unfinished: partition 0 (blocks 0..499), partition 1" in message
            # Blocked until the failure, then stopped at their first microbatch boundary.
            assert spans[0] == (0, 49) and spans[1] == (500, 549)
        else:
            assert statuses == {0: "done", 1: "done", 2: "failed"}
            assert "stopped unfinished" not in message
            assert spans[0] == (0, 499) and spans[1] == (500, 999)
        assert_holds_exactly(pg_destination, table, srv, [s for s in spans.values() if s])

        rerun = list(client.sql(QUERY).load("dest", table, stream=True, parallel_config=config))
        assert all(r.success for r in rerun)
        resumed = {r.metadata["worker_id"]: r for r in reversed(rerun)}  # first of each
        assert resumed[2].metadata["block_ranges"][0]["start"] == 1_100
        if stop_on_error:
            assert resumed[0].metadata["block_ranges"][0]["start"] == 50
            assert resumed[1].metadata["block_ranges"][0]["start"] == 550
        else:
            assert set(resumed) == {2}, "finished partitions must not run again"
        assert_table_equals_chain(pg_destination, table, srv.chain, "logs", blocks=(0, 1_499))


# -- stop() ---------------------------------------------------------------------------------


def test_stop_from_another_thread_ends_every_worker_promptly(
    destination: Destination,
) -> None:
    """Head 999, partitions 0..999, 1000..1999, 2000..2999: worker 1 streams at the head
    waiting for new blocks (its DoGet has not even returned), worker 2 waits for block
    1999 to exist. Once worker 2 says it waits and worker 0 has committed, another
    thread calls ``stop()``: the iteration ends within 2 s, with what was committed
    exact; after blocks are mined a rerun finishes exactly."""
    table = destination.new_table("par")
    config = split(3, 0, 2_999)
    with (
        DevServer(port=0, seed=42, initial_blocks=1_000, max_interval=50) as srv,
        connected(srv, with_checkpoints(destination)) as client,
    ):
        run = client.sql(QUERY).load("dest", table, stream=True, parallel_config=config)
        asked: list[float] = []
        waiting: set[str] = set()
        lock = threading.Lock()

        def stop() -> None:
            asked.append(time.monotonic())
            run.stop()

        def now(what: str) -> None:
            """Stop from another thread once worker 2 waits and worker 0 committed."""
            with lock:
                before = set(waiting)
                waiting.add(what)
                if waiting != before and waiting == {"worker 2 waits", "worker 0 committed"}:
                    threading.Thread(target=stop, name="stopper").start()

        results: list[LoadResult] = []
        with log_trigger(
            "waits for block 1999", lambda: now("worker 2 waits"), logger="amp.parallel"
        ):
            for result in run:  # ends by itself once every worker has stopped
                results.append(result)
                if result.metadata["worker_id"] == 0:
                    now("worker 0 committed")
        ended = time.monotonic()
        assert asked, "worker 2 never waited for its first block"
        assert ended - asked[0] < 2.0, f"stop() took {ended - asked[0]:.1f} s"
        assert all(r.success for r in results)
        statuses = {w: s.status for w, s in run.partitions.items()}
        assert statuses[1] == "stopped" and statuses[2] == "stopped"
        assert statuses[0] in ("stopped", "done")
        spans = [s for s in committed_blocks(run).values() if s]
        assert spans and spans[0][0] == 0
        assert_holds_exactly(destination, table, srv, spans)

        srv.chain.mine(2_000)
        rerun = list(client.sql(QUERY).load("dest", table, stream=True, parallel_config=config))
        assert all(r.success for r in rerun)
        assert_table_equals_chain(destination, table, srv.chain, "logs", blocks=(0, 2_999))


# -- max_block past the head -------------------------------------------------------------------


def test_max_block_past_the_head_waits_for_blocks_and_ends_at_max_block(
    destination: Destination,
) -> None:
    """Head 999, max_block 2999 (partition 2 starts at 2000, after a block that does not
    exist yet). Blocks are mined 250 at a time: on any result while partition 2 has no
    block to load, then each time partition 2 has caught up with the head. The last step makes
    block 2999 the head: the load must end by itself with it loaded (max_block
    included), never waiting for block 3000."""
    table = destination.new_table("par")
    config = split(3, 0, 2_999)
    with (
        DevServer(port=0, seed=43, initial_blocks=1_000, max_interval=50) as srv,
        connected(srv, with_checkpoints(destination)) as client,
    ):
        chain = srv.chain
        run = client.sql(QUERY).load("dest", table, stream=True, parallel_config=config)
        for result in run:
            assert result.success, result.error
            ranges = result.metadata.get("block_ranges")
            at_head = result.metadata["worker_id"] == 2 and ranges[-1]["end"] == chain.head
            if chain.head < 2_999 and (chain.head < 2_000 or at_head):
                chain.mine(250)
        assert chain.head == 2_999
        assert {s.status for s in run.partitions.values()} == {"done"}
        assert run.partitions[2].committed == 2_999
        assert_table_equals_chain(destination, table, chain, "logs", blocks=(0, 2_999))


def test_partitions_before_the_datasets_first_block(destination: Destination) -> None:
    """The dataset starts at block 1000; min_block is 0. Partitions 0..499 and 500..999
    hold no block; partition 1000..1499 has no block before it to start after, so it
    starts at the dataset's first block, as do the two others. Three streams send the
    same microbatches, yet each worker records as processed only its own blocks: none
    of partition 2's microbatches is skipped as a duplicate of another's."""
    table = destination.new_table("par")
    with (
        DevServer(port=0, seed=44, start_block=1_000, initial_blocks=500, max_interval=50) as srv,
        connected(srv, with_checkpoints(destination)) as client,
    ):
        config = split(3, 0, 1_499)
        run = client.sql(QUERY).load("dest", table, stream=True, parallel_config=config)
        results = list(run)
        assert all(r.success for r in results)
        assert not [r for r in results if r.metadata.get("operation") == "skip_duplicate"]
        assert {s.status for s in run.partitions.values()} == {"done"}
        assert sum(r.rows_loaded for r in results if r.metadata["worker_id"] != 2) == 0
        assert_table_equals_chain(destination, table, srv.chain, "logs")
