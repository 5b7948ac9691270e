"""``amp checkpoints list|reset`` on Redis after a real streaming load with checkpoints
and idempotency (the cycle: ``kit.checkpoints_cli.run_cycle``)."""

from __future__ import annotations

import pytest
import redis
from redis_support import Names, assert_exact, redis_config

from amp.devserver import DevServer
from kit.checkpoints_cli import run_cycle
from kit.services import REDIS_DB, REDIS_HOST, REDIS_PORT

pytestmark = pytest.mark.timeout(180)


def test_list_and_reset_checkpoints(
    redis_client: redis.Redis, names: Names, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"
    with DevServer(port=0, seed=5, initial_blocks=60, max_interval=10) as server:
        run_cycle(
            capsys,
            server,
            "redis",
            redis_config(),
            url,
            names.table,
            names.connection,
            lambda: assert_exact(redis_client, names.table, "hash", server.chain),
        )
