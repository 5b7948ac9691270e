"""``amp load --config FILE`` (issue 12) with two streaming loads, one into PostgreSQL and
one into Redis, as a real subprocess against the dev server: both reach the head, one
Ctrl-C stops both at a microbatch boundary (exit 0), both destinations equal the chain up
to their checkpoints, and a rerun of the same command resumes both from there. Here (not
in tests/client) because the Redis oracle, ``redis_support``, lives in this suite."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis_support import Names, assert_exact

from amp.devserver import DevServer
from ampcli import amp
from kit import PG_HOST, PG_PORT, REDIS_DB, REDIS_HOST, REDIS_PORT, Mine, SqlDestination
from kit.services import PG_DATABASE, PG_USER, require_postgres
from kit.sql import assert_table_equals_chain, checkpoint_ends

pytestmark = pytest.mark.timeout(180)

# Trust auth accepts any password: this one only has to stay out of every output.
PASSWORD = "Cfg-Secret-7d41e9"
QUERY = "SELECT * FROM eth_firehose.logs"


@pytest.fixture
def pg() -> Iterator[SqlDestination]:
    require_postgres()
    destination = SqlDestination("postgresql")
    try:
        yield destination
    finally:
        destination.drop_created()


def _config(path: Path, server: DevServer, pg_table: str, names: Names) -> Path:
    path.write_text(
        f'server = "{server.url}"\n'
        "no_progress = true\n"
        "\n[[load]]\n"
        f'query = "{QUERY}"\n'
        f'to = "postgresql://{PG_USER}:${{AMP_TEST_PG_PASSWORD}}@{PG_HOST}:{PG_PORT}/'
        f'{PG_DATABASE}"\n'
        f'table = "{pg_table}"\n'
        "stream = true\ncheckpoint = true\nidempotency = true\n"
        '[load.options]\ntext_nul = "bytea"\n'
        "\n[[load]]\n"
        f'query = "{QUERY}"\n'
        f'to = "redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"\n'
        f'table = "{names.table}"\n'
        f'connection_name = "{names.connection}"\n'
        "stream = true\ncheckpoint = true\nidempotency = true\n"
    )
    return path


def _run_to_head_and_interrupt(config: Path, pg_table: str, names: Names) -> str:
    """One process lifetime: both loads log their commit at the head, then one SIGINT;
    the process must end by itself with 0."""
    with amp("load", "--config", str(config)) as process:
        waiting = {
            f"[[load]] 0 (table {pg_table!r}): at the chain head",
            f"[[load]] 1 (table {names.table!r}): at the chain head",
        }
        while waiting:  # the two loads reach the head in either order
            line = process.wait_for(": at the chain head", timeout=90)
            waiting = {words for words in waiting if words not in line}
        process.popen.send_signal(signal.SIGINT)
        code, output = process.finish(timeout=60)
    assert code == 0, output
    assert "Traceback" not in output, output
    assert PASSWORD not in output
    return output


def _redis_checkpoint_end(client: redis.Redis, names: Names) -> int:
    raw = client.get(names.checkpoint_key())
    assert raw is not None, f"no checkpoint at {names.checkpoint_key()}"
    return int(json.loads(raw)["ranges"][-1]["end"])


def test_two_loads_stop_on_one_ctrl_c_and_resume(
    tmp_path: Path,
    pg: SqlDestination,
    names: Names,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AMP_TEST_PG_PASSWORD", PASSWORD)
    pg_table = pg.new_table("cfg")
    with DevServer(port=0, seed=12, initial_blocks=150) as server:
        config = _config(tmp_path / "amp.toml", server, pg_table, names)
        first = _run_to_head_and_interrupt(config, pg_table, names)
        head = server.chain.head
        assert checkpoint_ends(pg, pg_table) == [(0, head)]
        assert _redis_checkpoint_end(redis_client, names) == head
        assert_table_equals_chain(pg, pg_table, server.chain)
        assert_exact(redis_client, names.table, "hash", server.chain)
        label = f"[[load]] 1 (table {names.table!r})"
        assert f"{label}: loaded " in first

        Mine(40)(server.chain)
        second = _run_to_head_and_interrupt(config, pg_table, names)
        assert second.count("Resuming from checkpoint") == 2, second
        head = server.chain.head
        assert checkpoint_ends(pg, pg_table) == [(0, head)]
        assert _redis_checkpoint_end(redis_client, names) == head
        assert_table_equals_chain(pg, pg_table, server.chain)
        assert_exact(redis_client, names.table, "hash", server.chain)
