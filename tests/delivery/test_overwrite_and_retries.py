"""``mode='overwrite'`` starts the table's delivery state afresh; a PostgreSQL backend
killed between microbatches is retried without losing or doubling rows."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from delivery_support import (
    Destination,
    assert_equals_chain,
    load_to_head,
)

from amp.client import LoadResult
from amp.devserver import DevServer
from kit import LOGS_QUERY, block_range, connected, drive, operation

pytestmark = pytest.mark.timeout(60)

FEATURES = {"checkpoint": {"enabled": True}, "idempotency": {"enabled": True}}
FAST_RETRIES = {"retry": {"initial_backoff_ms": 5, "max_backoff_ms": 20, "jitter": False}}


@pytest.fixture
def srv95() -> Iterator[DevServer]:
    with DevServer(port=0, seed=3, initial_blocks=95, max_interval=10) as server:
        yield server


def test_overwrite_resets_checkpoint_and_processed_ranges(
    srv95: DevServer, dest: Destination
) -> None:
    config = dest.config(**FEATURES)
    first = load_to_head(srv95, dest, config)
    assert block_range(first.results[-1])["end"] == 94
    assert dest.checkpoint() is not None

    srv95.chain.mine(10)
    again = load_to_head(srv95, dest, config, mode="overwrite")
    assert block_range(again.results[0])["start"] == 0, "overwrite must load from block 0"
    assert all(operation(r) == "load" for r in again.results), [
        r.metadata.get("operation") for r in again.results
    ]
    assert_equals_chain(dest, srv95.chain)
    checkpoint = dest.checkpoint()
    assert checkpoint is not None
    assert checkpoint["checkpoint_data"]["ranges"] == [block_range(again.results[-1])]
    processed = [(start, end) for start, end, _, _ in dest.processed()]
    assert processed == [(n, min(n + 9, 104)) for n in range(0, 105, 10)], (
        "overwrite must forget the processed ranges of the replaced table (90..94 is stale)"
    )


def test_terminated_backend_between_microbatches_is_retried(
    srv: DevServer,
    pg_dest: Destination,
    pg_admin: psycopg.Connection[Any],
    amp_logs: pytest.LogCaptureFixture,
) -> None:
    """Checkpoints and idempotency off: the retries alone must replay each microbatch
    whole, exactly once."""
    config = pg_dest.config(resilience=FAST_RETRIES)
    killed: list[int] = []

    with connected(srv, pg_dest.name, "postgresql", config) as client:

        def terminate(result: LoadResult) -> None:
            if len(killed) < 5 and block_range(result)["end"] % 20 == 9:
                pid = client._get_loader(pg_dest.name).connection.info.backend_pid
                row = pg_admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()
                assert row is not None and row[0] is True, f"backend {pid} was not terminated"
                killed.append(pid)

        load = client.sql(LOGS_QUERY).load(pg_dest.name, pg_dest.table, stream=True)
        run = drive(load, srv.chain, on_result=terminate)
    assert len(killed) == 5
    assert len(set(killed)) == 5, "every retry must run on a new connection"
    assert [block_range(r)["start"] for r in run.results] == list(range(0, 100, 10))
    assert sum(r.rows_loaded for r in run.results) == assert_equals_chain(pg_dest, srv.chain)
    retries = [r for r in amp_logs.records if r.getMessage().startswith("Retry attempt 1/")]
    assert len(retries) >= 5, "each terminated backend must cost a retry"
