"""Issue 9: secrets never printed (#11), and the CLI's second Ctrl-C, destination URLs,
unqualified tables and the load-start line (#14). The CLI runs as a real subprocess."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from amp.client import Client
from amp.devserver import DevServer
from amp.errors import ConfigError, ServerError
from ampcli import amp

pytestmark = pytest.mark.timeout(120)

QUERY = "SELECT * FROM eth_firehose.blocks"


# -- #11 secrets --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("loader", "config"),
    [
        ("postgresql", {"host": "127.0.0.1", "password": 987654321}),
        ("redis", {"password": 987654321}),
        ("postgresql", {"dsn": 987654321}),
    ],
    ids=["postgresql-password", "redis-password", "postgresql-dsn"],
)
def test_a_wrong_type_secret_is_not_echoed(loader: str, config: dict[str, object]) -> None:
    client = Client("grpc://127.0.0.1:1")
    try:
        with pytest.raises(ConfigError) as raised:
            client.configure_connection("dest", loader, config)
    finally:
        client.close()
    assert "987654321" not in str(raised.value)
    assert next(iter(k for k in config if k != "host")) in str(raised.value)


def test_kafka_url_credentials_never_printed(tmp_path: Path) -> None:
    with (
        DevServer(port=0, seed=1, initial_blocks=5) as srv,
        amp(
            "load",
            "--server",
            srv.url,
            "--query",
            QUERY,
            "--table",
            "t",
            "--no-progress",
            "--to",
            "kafka://amp-user:Kafka5ecretPW@127.0.0.1:1/t",
        ) as process,
    ):
        process.wait_for("Retry attempt", timeout=90)
        process.popen.terminate()
        _, output = process.finish()
    assert "Kafka5ecretPW" not in output
    assert "127.0.0.1:1" in output  # the messages are there, only the secret is not


def test_server_url_credentials_never_printed(tmp_path: Path) -> None:
    with amp(
        "load",
        "--server",
        "grpc://amp-user:T0kenSecret@127.0.0.1:1",
        "--query",
        QUERY,
        "--table",
        "t",
        "--no-progress",
        "--to",
        f"duckdb:///{tmp_path}/out.db",
    ) as process:
        process.wait_for("Retry attempt")
        process.popen.terminate()
        _, output = process.finish()
    assert "T0kenSecret" not in output
    assert "grpc://***@127.0.0.1:1" in output or "grpc://127.0.0.1:1" in output


def test_client_repr_and_errors_hide_url_credentials() -> None:
    client = Client("grpc://amp-user:T0kenSecret@127.0.0.1:1")
    try:
        assert "T0kenSecret" not in repr(client) + repr(client.transport)
        with pytest.raises(ServerError) as raised:
            client.sql(QUERY).to_arrow()
        assert "T0kenSecret" not in str(raised.value)
    finally:
        client.close()


# -- #14 -----------------------------------------------------------------------------------


def test_second_ctrl_c_exits_130_with_one_line(tmp_path: Path) -> None:
    """The first Ctrl-C asks for a stop at the next boundary; while the load is backing
    off from an unreachable server, a second one must end it at once: exit 130, no
    traceback."""
    with amp(
        "load",
        "--server",
        "grpc://127.0.0.1:1",
        "--query",
        QUERY,
        "--table",
        "t",
        "--no-progress",
        "--stream",
        "--to",
        f"duckdb:///{tmp_path}/out.db",
    ) as process:
        process.wait_for("Backing off")
        process.popen.send_signal(signal.SIGINT)
        process.wait_for("Ctrl-C again")
        process.popen.send_signal(signal.SIGINT)
        code, output = process.finish()
    assert code == 130, output
    assert "Traceback" not in output
    assert output.strip().splitlines()[-1] == (
        "amp load: interrupted; an open transaction was rolled back"
    )


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("redis://127.0.0.1:6379/seven", "the database 'seven' must be a number"),
        ("redis://127.0.0.1:port/0", "the port 'port'"),
        ("postgresql://postgres@127.0.0.1:70000/test", "the port '70000'"),
        ("postgresql://postgres@127.0.0.1:5432/test?sslmod=require", "unknown URL parameter"),
        ("kafka://127.0.0.1:9092", "the topic is missing"),
        ("kafka://127.0.0.1:9092/t?acks=all", "unknown URL parameter 'acks'"),
        ("duckdb:///x.db?threads=2", "unknown URL parameters"),
    ],
)
def test_bad_destination_url_part_is_named(url: str, words: str) -> None:
    with amp(
        "load",
        "--server",
        "grpc://127.0.0.1:1",
        "--query",
        QUERY,
        "--table",
        "t",
        "--to",
        url,
    ) as process:
        code, output = process.finish()
    assert code == 2, output
    assert words in output
    assert "e.g. " in output


def test_unqualified_table_error_names_the_dataset_form() -> None:
    with DevServer(port=0, seed=1, initial_blocks=5) as srv:
        client = Client(srv.url)
        try:
            with pytest.raises(ServerError) as raised:
                client.sql("SELECT * FROM blocks").to_arrow()
        finally:
            client.close()
        message = str(raised.value)
        assert raised.value.status == "NOT_FOUND"
        assert "tables are named <dataset>.<table>" in message
        assert "eth_firehose.blocks, eth_firehose.logs, eth_firehose.transactions" in message
        with amp("query", "--server", srv.url, "SELECT * FROM blocks") as process:
            code, output = process.finish()
        assert code == 2
        assert "tables are named <dataset>.<table>" in output


def test_load_start_line_says_where_rows_go(tmp_path: Path) -> None:
    """A PostgreSQL config without database silently wrote into the OS user's database:
    the INFO line at the start says host, port, database (resolved) and table."""
    with (
        DevServer(port=0, seed=1, initial_blocks=5) as srv,
        amp(
            "load",
            "--server",
            srv.url,
            "--query",
            QUERY,
            "--table",
            "blocks_start_line",
            "--no-progress",
            "--to",
            "postgresql://postgres@127.0.0.1:5432",
        ) as process,
    ):
        _, output = process.finish()
    line = next(line for line in output.splitlines() if "loading into" in line)
    assert "INFO" in line
    assert "postgresql://127.0.0.1:5432/postgres as user 'postgres'" in line
    assert "no database given" in line
    assert "table public.blocks_start_line" in line
