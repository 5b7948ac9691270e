"""``amp --log-format json`` (and ``AMP_LOG_FORMAT``): one JSON object per stderr line,
with no secret in any of them, from the real command loading into PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator

import psycopg
import pytest

from amp.devserver import DevServer
from ampcli import run_amp
from kit import PG_DSN, require_postgres, unique

pytestmark = pytest.mark.timeout(180)

SECRET = "Pg5ecretPassw0rd"
# Trust authentication: the password is sent, never needed; it must never be printed.
URL = f"postgresql://postgres:{SECRET}@127.0.0.1:5432/test"
QUERY = "SELECT block_num, hash FROM eth_firehose.blocks"


@pytest.fixture(scope="module")
def server() -> Iterator[DevServer]:
    with DevServer(port=0, seed=5, initial_blocks=20) as srv:
        yield srv


@pytest.fixture
def table() -> Iterator[str]:
    require_postgres()
    name = unique("logfmt")
    try:
        yield name
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f'DROP TABLE IF EXISTS "{name}"')


def json_lines(stderr: str) -> list[dict[str, str]]:
    lines = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    for line in lines:
        assert set(line) >= {"time", "level", "logger", "message"}, line
    return lines


def test_json_log_lines_parse_and_hold_no_secret(server: DevServer, table: str) -> None:
    done = run_amp(
        "--log-format",
        "json",
        "load",
        "--server",
        server.url,
        "--query",
        QUERY,
        "--to",
        URL,
        "--table",
        table,
        "--no-progress",
    )
    assert done.returncode == 0, done.stderr
    lines = json_lines(done.stderr)  # every stderr line is a JSON object
    start = [line for line in lines if line["logger"] == "amp.client"]
    assert start and "127.0.0.1" in start[0]["message"]
    assert lines[0]["level"] == "INFO"
    assert SECRET not in done.stdout + done.stderr
    with psycopg.connect(PG_DSN) as conn:
        (count,) = conn.execute(f'SELECT count(*) FROM "{table}"').fetchone() or (0,)
    assert count == server.chain.canonical_table("blocks").num_rows


def test_environment_sets_the_format_and_the_flag_wins(server: DevServer, table: str) -> None:
    args = ("load", "--server", server.url, "--query", QUERY, "--to", URL, "--no-progress")
    done = run_amp(*args, "--table", table, env={"AMP_LOG_FORMAT": "json"})
    assert done.returncode == 0, done.stderr
    assert json_lines(done.stderr)
    text = run_amp("--log-format", "text", *args, "--table", table, env={"AMP_LOG_FORMAT": "json"})
    assert text.returncode == 0, text.stderr
    assert text.stderr and not text.stderr.lstrip().startswith("{")
    assert " INFO amp.client: " in text.stderr
    assert SECRET not in done.stderr + text.stderr


def test_an_unknown_environment_format_is_a_usage_error() -> None:
    done = run_amp(
        "query", "--server", "grpc://127.0.0.1:1", "SELECT 1", env={"AMP_LOG_FORMAT": "xml"}
    )
    assert done.returncode == 2
    assert "AMP_LOG_FORMAT must be text or json, got 'xml'" in done.stderr


def test_a_traceback_in_a_json_record_is_redacted() -> None:
    import logging

    from amp.cli_logging import JsonFormatter, redact_record

    try:
        raise OSError(f"cannot reach {URL}")
    except OSError:
        record = logging.LogRecord(
            "amp.test", logging.ERROR, __file__, 1, "failed for %s", (URL,), exc_info=True
        )
        import sys

        record.exc_info = sys.exc_info()
    assert redact_record(record)
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "ERROR" and line["logger"] == "amp.test"
    assert SECRET not in json.dumps(line)
    assert "OSError" in line["exception"]
