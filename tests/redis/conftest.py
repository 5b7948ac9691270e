"""Fixtures of the Redis loader suite: a real Redis at 127.0.0.1:6379 (db 9), never a fake.

When Redis is not running every test fails (never skips) with a message saying so.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from redis_support import Names, delete_keys

from kit import connect_redis


@pytest.fixture(scope="session")
def redis_client() -> Iterator[redis.Redis]:
    """A client of the test database, after checking that Redis answers."""
    client = connect_redis()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def names(redis_client: redis.Redis) -> Iterator[Names]:
    """Unique table and connection names; their keys are deleted after the test."""
    fresh = Names.fresh()
    delete_keys(redis_client, fresh)
    try:
        yield fresh
    finally:
        delete_keys(redis_client, fresh)
