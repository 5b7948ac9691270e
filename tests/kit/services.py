"""The real services the suites talk to, and names that never collide between tests.

PostgreSQL answers at 127.0.0.1:5432 (trust auth, database ``test``, user ``postgres``)
and Redis at 127.0.0.1:6379 (``make services``). A suite that needs one and finds it down
fails saying so: a missing service is a broken test environment, never a reason to skip.
"""

from __future__ import annotations

import socket
import uuid

import psycopg
import pytest
import redis

PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_DATABASE = "test"
PG_USER = "postgres"
PG_DSN = f"host={PG_HOST} port={PG_PORT} dbname={PG_DATABASE} user={PG_USER}"
PG_URL = f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{PG_DATABASE}"
# Every Redis test writes to this database, under key names unique to the test.
REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379
REDIS_DB = 9
# The query most suites stream: every log row carries its block number and hash.
LOGS_QUERY = "SELECT * FROM eth_firehose.logs"


def require_postgres() -> None:
    """Fail the test (never skip) when the test PostgreSQL does not answer."""
    try:
        with psycopg.connect(PG_DSN, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        pytest.fail(
            f"PostgreSQL is not reachable with {PG_DSN!r}: {exc}. These tests need a real "
            f"PostgreSQL on {PG_HOST}:{PG_PORT} (trust auth, database {PG_DATABASE!r}, user "
            f"{PG_USER!r}); start it with `make services`.",
            pytrace=False,
        )


def connect_redis() -> redis.Redis:
    """A client of the test Redis database, or a test failure saying Redis is not there."""
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB, socket_timeout=30)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(
            f"Redis at {REDIS_HOST}:{REDIS_PORT} is not reachable: {exc}; these tests need a "
            "real server there (run `make services`)",
            pytrace=False,
        )
    return client


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def unique(prefix: str) -> str:
    """``prefix`` and 10 random hex digits: a table, topic or connection name of one test."""
    return f"{prefix}_{uuid.uuid4().hex[:10]}"
