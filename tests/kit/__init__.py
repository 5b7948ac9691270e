"""The harness every suite shares (``tests`` is on pytest's ``pythonpath``: ``import kit``).

- ``kit.services``: the test PostgreSQL and Redis, free ports, unique names.
- ``kit.chain``: the dev server's chain as the oracle; reorgs and new blocks to apply.
- ``kit.driving``: a streaming load driven from its own results (no sleeps).
- ``kit.sql``: a PostgreSQL or DuckDB destination read back and compared with the chain.

Why one kit: each suite used to carry its own copy of these, and the copies drifted (one
``caught_up`` checked the head's hash, another did not). A suite's own helper module
keeps only what is particular to its destination or its faults.
"""

from kit.chain import ChainChange, Mine, Reorg, Row, canonical_count, normalise
from kit.driving import (
    Action,
    Driven,
    OnResult,
    assert_reorgs_reported,
    block_range,
    caught_up,
    collect,
    connected,
    drive,
    load_to_head,
    operation,
)
from kit.services import (
    LOGS_QUERY,
    PG_DSN,
    PG_HOST,
    PG_PORT,
    PG_URL,
    REDIS_DB,
    REDIS_HOST,
    REDIS_PORT,
    connect_redis,
    free_port,
    require_postgres,
    unique,
)
from kit.sql import SqlDestination, assert_table_equals_chain, checkpoint_ends, stored_plan

__all__ = [
    "LOGS_QUERY",
    "PG_DSN",
    "PG_HOST",
    "PG_PORT",
    "PG_URL",
    "REDIS_DB",
    "REDIS_HOST",
    "REDIS_PORT",
    "Action",
    "ChainChange",
    "Driven",
    "Mine",
    "OnResult",
    "Reorg",
    "Row",
    "SqlDestination",
    "assert_reorgs_reported",
    "assert_table_equals_chain",
    "block_range",
    "canonical_count",
    "caught_up",
    "checkpoint_ends",
    "collect",
    "connect_redis",
    "connected",
    "drive",
    "free_port",
    "load_to_head",
    "normalise",
    "operation",
    "require_postgres",
    "stored_plan",
    "unique",
]
