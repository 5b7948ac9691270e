"""The resilience guide's two parallel samples, run as written (the server URL and the
PostgreSQL credentials aside) against a dev server whose chain holds blocks 0..1,000,000
and a real PostgreSQL: "Parallel Streaming with Resilience" (8 workers, the guide's retry
and breaker overrides) and "Parallel Streaming with Checkpoints" (4 workers, a
checkpoint each, resumed after a stop; the guide's monitoring query reads them).

The guide leaves ``query`` to the reader; here it selects the block number and hash of
``eth_firehose.blocks`` (the table the samples partition), so that a million rows load in
about a minute. Each test writes to a schema of its own (the guide's table is ``blocks``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from amp.client import Client
from amp.devserver import DevServer
from amp.devserver.chain import SimulatedChain
from kit import PG_DSN as PG_CONNINFO

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

query = "SELECT block_num, hash FROM eth_firehose.blocks"
LAST = 1_000_000


@pytest.fixture(scope="module")
def srv() -> Iterator[DevServer]:
    with DevServer(port=0, seed=51, initial_blocks=LAST + 1) as server:
        yield server


@pytest.fixture
def schema(postgres: str) -> Iterator[str]:
    name = f"amp_guide_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_CONNINFO, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{name}"')
        try:
            yield name
        finally:
            conn.execute(f'DROP SCHEMA "{name}" CASCADE')


def assert_blocks_equal_the_chain(schema: str, chain: SimulatedChain) -> None:
    """``blocks`` holds each of blocks 0..LAST once, with its canonical hash."""
    with psycopg.connect(PG_CONNINFO) as conn:
        rows = conn.execute(f'SELECT block_num, hash FROM "{schema}".blocks').fetchall()
    assert len(rows) == LAST + 1, f"{len(rows)} rows, expected {LAST + 1}"
    hashes = {int(number): bytes(value) for number, value in rows}
    assert len(hashes) == LAST + 1, "a block was loaded twice"
    wrong = [n for n in range(LAST + 1) if hashes.get(n) != chain.canonical_hash(n)]
    assert not wrong, f"{len(wrong)} blocks missing or with another hash, e.g. {wrong[:5]}"


def configure(client: Client, schema: str, **extra: Any) -> None:
    """The guide's ``my_postgres``, writing ``blocks`` and its checkpoint tables (which
    amp creates unqualified, on the search_path) into ``schema``."""
    client.configure_connection(
        name="my_postgres",
        loader="postgresql",
        config={
            "dsn": f"{PG_CONNINFO} options='-c search_path={schema}'",
            "schema": schema,
            "text_nul": "bytea",
            **extra,
        },
    )


def test_parallel_streaming_with_resilience(srv: DevServer, schema: str) -> None:
    client = Client(srv.url)
    configure(client, schema)
    # -- the guide's sample, as written ------------------------------------------------
    from amp.streaming.parallel import ParallelConfig
    from amp.streaming.resilience import CircuitBreakerConfig, RetryConfig

    # Configure resilience for parallel workers
    parallel_config = ParallelConfig(
        num_workers=8,
        table_name="eth_firehose.blocks",
        min_block=0,
        max_block=1_000_000,
        # Resilience for all workers
        retry_config=RetryConfig(max_retries=5, initial_backoff_ms=1000),
        circuit_breaker_config=CircuitBreakerConfig(failure_threshold=10, timeout_ms=60000),
    )

    results = client.sql(query).load(
        connection="my_postgres",
        destination="blocks",
        stream=True,
        parallel_config=parallel_config,
    )
    # -- end of the sample ---------------------------------------------------------------
    try:
        loaded = [result for result in results]
    finally:
        client.close()
    assert all(r.success for r in loaded)
    assert {r.metadata["worker_id"] for r in loaded} == set(range(8))
    assert sum(r.rows_loaded for r in loaded) == LAST + 1
    assert_blocks_equal_the_chain(schema, srv.chain)


def test_parallel_streaming_with_checkpoints(srv: DevServer, schema: str) -> None:
    """The sample, stopped at its first result, then run again: each worker resumes
    after its own checkpoint (or from its first block, if it had committed nothing), and
    the guide's monitoring query lists one checkpoint per worker."""

    def run_sample(stop_at_once: bool) -> list[Any]:
        client = Client(srv.url)
        # The guide's checkpoint config ("Checkpoint-Based Resume").
        configure(
            client,
            schema,
            checkpoint={"enabled": True, "storage": "db", "table_prefix": "amp_"},
        )
        # -- the guide's sample, as written --------------------------------------------
        from amp.streaming.parallel import ParallelConfig

        parallel_config = ParallelConfig(
            num_workers=4, table_name="eth_firehose.blocks", min_block=0, max_block=1_000_000
        )
        # -- end of the sample -----------------------------------------------------------
        results = client.sql(query).load(
            connection="my_postgres",
            destination="blocks",
            stream=True,
            parallel_config=parallel_config,
        )
        seen = []
        try:
            for result in results:
                seen.append(result)
                if stop_at_once:
                    results.stop()  # each worker stops at its next commit
        finally:
            client.close()
        assert all(r.success for r in seen)
        return seen

    first = run_sample(stop_at_once=True)
    committed: dict[int, int] = {}
    for result in first:
        worker, partition = result.metadata["worker_id"], result.metadata["partition"]
        committed[worker] = result.metadata["block_ranges"][-1]["end"]
        # A commit holds at most 100,000 rows (one per block here): nothing finished.
        assert committed[worker] < partition["end"]

    second = run_sample(stop_at_once=False)
    firsts: dict[int, Any] = {}
    for result in second:
        firsts.setdefault(result.metadata["worker_id"], result)
    assert sorted(firsts) == [0, 1, 2, 3]
    for worker, result in firsts.items():
        expected = committed[worker] + 1 if worker in committed else None
        start = result.metadata["block_ranges"][0]["start"]
        assert start == (expected or result.metadata["partition"]["start"]), worker
    assert_blocks_equal_the_chain(schema, srv.chain)

    # The guide's "View all active checkpoints" query, as written.
    with psycopg.connect(PG_CONNINFO, options=f"-c search_path={schema}") as conn:
        rows = conn.execute(
            """
            SELECT
                connection_name,
                table_name,
                worker_id,
                checkpoint_data->>'is_reorg' as is_reorg,
                timestamp,
                checkpoint_data->'ranges'->0->>'network' as network,
                checkpoint_data->'ranges'->0->>'start' as block_start,
                checkpoint_data->'ranges'->0->>'end' as block_end
            FROM amp_checkpoints
            ORDER BY timestamp DESC;
            """
        ).fetchall()
    workers = {row[2]: int(row[7]) for row in rows if row[1] == "blocks"}
    assert sorted(workers) == [0, 1, 2, 3]
    assert max(workers.values()) >= LAST
