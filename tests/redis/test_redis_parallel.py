"""Parallel streaming loads into Redis (hashes with a block index): a bounded load equals
the canonical chain over ``[min_block, max_block]`` with a checkpoint per worker; a
hybrid load ends equal to the chain through reorgs around the hand-off block; a stream
(``data_structure='stream'``), whose entry ids must grow, is refused up front."""

from __future__ import annotations

import json

import pytest
import redis
from redis_support import Names, assert_exact, redis_config

from amp.client import Client
from amp.devserver import DevServer
from amp.errors import ConfigError
from kit import LOGS_QUERY as QUERY
from parallelkit import around_handoff, drive_hybrid, first_live_block, reorgs_of, split

pytestmark = pytest.mark.timeout(120)


def test_bounded_parallel_load_equals_the_chain(redis_client: redis.Redis, names: Names) -> None:
    """Two threads, five partitions of 130 blocks, microbatches of 40 (every seam falls
    inside one); the rerun finds every partition done."""
    parallel = split(2, 5, 599, partition_size=130)
    config = redis_config(checkpoint=True, idempotency=True)
    with DevServer(port=0, seed=21, initial_blocks=700, max_interval=40) as srv:
        client = Client(srv.url)
        try:
            client.configure_connection(names.connection, "redis", config)
            run = client.sql(QUERY).load(
                names.connection, names.table, stream=True, parallel_config=parallel
            )
            results = list(run)
            assert all(r.success for r in results)
            partitions = {r.metadata["worker_id"]: r.metadata["partition"] for r in results}
            assert sorted(partitions) == [0, 1, 2, 3, 4]
            assert_exact(redis_client, names.table, "hash", srv.chain, blocks=(5, 599))
            for worker, partition in partitions.items():
                raw = redis_client.get(f"amp_checkpoint:{names.connection}:{names.table}:{worker}")
                assert raw is not None, f"no checkpoint of worker {worker}"
                assert json.loads(raw)["ranges"][-1]["end"] >= partition["end"]
            again = client.sql(QUERY).load(
                names.connection, names.table, stream=True, parallel_config=parallel
            )
            assert list(again) == []
        finally:
            client.close()
    assert_exact(redis_client, names.table, "hash", srv.chain, blocks=(5, 599))


def test_hybrid_load_through_reorgs_around_the_handoff(
    redis_client: redis.Redis, names: Names
) -> None:
    """H = 240 - 20 = 220: three backfill workers, then the live one (worker 3)."""
    parallel = split(3, 0, None, reorg_buffer=20)
    with DevServer(port=0, seed=22, initial_blocks=241, max_interval=25) as srv:
        client = Client(srv.url)
        try:
            client.configure_connection(names.connection, "redis", redis_config(checkpoint=True))
            run = client.sql(QUERY).load(
                names.connection, names.table, stream=True, parallel_config=parallel
            )
            seen = drive_hybrid(run, srv.chain, live_worker=3, changes=around_handoff())
        finally:
            client.close()
    assert {r.metadata["worker_id"] for r in seen} == {0, 1, 2, 3}
    assert first_live_block(seen, live_worker=3) == 221
    assert min(reorgs_of(seen, worker=3)) < 221
    assert_exact(redis_client, names.table, "hash", srv.chain)


def test_a_parallel_load_into_a_redis_stream_is_refused(names: Names) -> None:
    parallel = split(2, 0, 99)
    with DevServer(port=0, seed=23, initial_blocks=120) as srv:
        client = Client(srv.url)
        try:
            client.configure_connection(names.connection, "redis", redis_config("stream"))
            with pytest.raises(ConfigError, match="data_structure='hash'"):
                client.sql(QUERY).load(
                    names.connection, names.table, stream=True, parallel_config=parallel
                )
        finally:
            client.close()
