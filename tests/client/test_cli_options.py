"""``amp load --option KEY=VALUE`` and the environment variables of the common flags
(``AMP_SERVER``, ``AMP_TO``, ``AMP_AUTH_TOKEN``), as the real command against the dev
server and the test PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from amp.devserver import DevServer
from ampcli import run_amp
from kit import PG_DSN, PG_URL, require_postgres, unique

pytestmark = pytest.mark.timeout(180)

QUERY = "SELECT block_num, hash FROM eth_firehose.blocks"
NO_SUCH_DB = "postgresql://postgres@127.0.0.1:5432/no_such_database_amp"


@pytest.fixture(scope="module")
def server() -> Iterator[DevServer]:
    with DevServer(port=0, seed=3, initial_blocks=30) as srv:
        yield srv


@pytest.fixture
def schema() -> Iterator[str]:
    """A schema of its own, dropped with everything in it afterwards."""
    require_postgres()
    name = unique("opt")
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{name}"')
    try:
        yield name
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{name}" CASCADE')


def hashes_in(schema: str, table: str) -> set[str]:
    with psycopg.connect(PG_DSN) as conn:
        rows = conn.execute(f'SELECT hash FROM "{schema}"."{table}"').fetchall()
    return {"0x" + bytes(row[0]).hex() for row in rows}


def chain_hashes(server: DevServer) -> set[str]:
    return {
        "0x" + value.hex() for value in server.chain.canonical_table("blocks")["hash"].to_pylist()
    }


def load(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    done = run_amp("load", "--query", QUERY, "--no-progress", *args, env=env)
    return done.returncode, done.stdout + done.stderr


def test_options_set_loader_keys_and_win_over_the_url(server: DevServer, schema: str) -> None:
    # The URL names a database that does not exist; the dsn option replaces it.
    code, output = load(
        "--server",
        server.url,
        "--to",
        NO_SUCH_DB,
        "--table",
        "blocks",
        "--option",
        f"dsn={PG_URL}",
        "--option",
        f"schema={schema}",
        "--option",
        "connect_timeout=5",  # JSON: the int 5
    )
    assert code == 0, output
    assert hashes_in(schema, "blocks") == chain_hashes(server)


def test_unknown_option_names_the_closest_key(server: DevServer) -> None:
    code, output = load(
        "--server", server.url, "--to", PG_URL, "--table", "t", "--option", "shema=x"
    )
    assert code == 2, output
    assert "unknown key 'shema'" in output
    assert "did you mean 'schema'?" in output


def test_option_values_are_typed_and_checked(server: DevServer) -> None:
    # '"5432"' is the JSON string "5432": the loader wants an int port.
    code, output = load(
        "--server", server.url, "--to", PG_URL, "--table", "t", "--option", 'port="5432"'
    )
    assert code == 2, output
    assert "postgresql config['port'] must be int" in output
    code, output = load(
        "--server", server.url, "--to", PG_URL, "--table", "t", "--option", "text_nul=drop"
    )
    assert code == 2, output
    assert "text_nul" in output and "error, strip, bytea" in output


def test_a_malformed_option_is_a_usage_error(server: DevServer) -> None:
    code, output = load(
        "--server", server.url, "--to", PG_URL, "--table", "t", "--option", "Pa55word"
    )
    assert code == 2
    assert "expected KEY=VALUE" in output
    assert "Pa55word" not in output.split("error:")[-1]


def test_environment_gives_server_and_destination(server: DevServer, schema: str) -> None:
    code, output = load(
        "--table",
        "blocks",
        "--option",
        f"schema={schema}",
        env={"AMP_SERVER": server.url, "AMP_TO": PG_URL},
    )
    assert code == 0, output
    assert hashes_in(schema, "blocks") == chain_hashes(server)


def test_flags_win_over_the_environment(server: DevServer, schema: str) -> None:
    code, output = load(
        "--server",
        server.url,
        "--to",
        PG_URL,
        "--table",
        "blocks",
        "--option",
        f"schema={schema}",
        env={"AMP_SERVER": "grpc://127.0.0.1:1", "AMP_TO": NO_SUCH_DB},
    )
    assert code == 0, output
    assert hashes_in(schema, "blocks") == chain_hashes(server)


def test_without_server_or_environment_the_flag_is_required() -> None:
    done = run_amp("query", "SELECT 1", env={"AMP_SERVER": ""})
    assert done.returncode == 2
    assert "--server" in done.stderr


def test_auth_token_from_the_environment() -> None:
    sql = "SELECT block_num FROM eth_firehose.blocks WHERE block_num < 4"
    with DevServer(port=0, seed=3, initial_blocks=10, auth_token="Tok3nFromEnv") as srv:
        done = run_amp(
            "query",
            "--format",
            "json",
            sql,
            env={"AMP_SERVER": srv.url, "AMP_AUTH_TOKEN": "Tok3nFromEnv"},
        )
        assert done.returncode == 0, done.stderr
        assert len(done.stdout.splitlines()) == 4
        refused = run_amp("query", sql, env={"AMP_SERVER": srv.url, "AMP_AUTH_TOKEN": ""})
        assert refused.returncode == 2
        flag_wins = run_amp(
            "query",
            "--auth-token",
            "wrong",
            sql,
            env={"AMP_SERVER": srv.url, "AMP_AUTH_TOKEN": "Tok3nFromEnv"},
        )
        assert flag_wins.returncode == 2
    assert "Tok3nFromEnv" not in done.stderr + refused.stderr + flag_wins.stderr
