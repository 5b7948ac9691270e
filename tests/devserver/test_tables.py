"""``amp tables`` against the dev server, and the catalog requests a real Amp server refuses.

The listing is compared with the schema the same server streams for ``SELECT * ... LIMIT
0`` (DoGet), and with the column types protocol §6 states.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.flight as flight
import pytest
from flightclient import connect, run_batch

from amp.cli import main
from amp.devserver import DevServer
from amp.flight import protowire

TABLES = ("blocks", "transactions", "logs")

# Column types protocol §6 states for the EVM datasets (every one the spec names).
SPEC_TYPES: dict[str, dict[str, pa.DataType]] = {
    "blocks": {
        "_block_num": pa.uint64(),
        "block_num": pa.uint64(),
        "timestamp": pa.timestamp("ns", tz="+00:00"),
        "hash": pa.binary(32),
        "parent_hash": pa.binary(32),
        "miner": pa.binary(20),
        "logs_bloom": pa.binary(),
        "gas_limit": pa.uint64(),
        "gas_used": pa.uint64(),
        "extra_data": pa.binary(),
        "nonce": pa.uint64(),
    },
    "transactions": {
        "_block_num": pa.uint64(),
        "block_hash": pa.binary(32),
        "block_num": pa.uint64(),
        "tx_index": pa.uint32(),
        "tx_hash": pa.binary(32),
        "to": pa.binary(20),
        "nonce": pa.uint64(),
        "gas_limit": pa.uint64(),
        "value": pa.string(),
        "input": pa.binary(),
        "gas_used": pa.uint64(),
        "type": pa.int32(),
        "from": pa.binary(20),
        "status": pa.int32(),
    },
    "logs": {
        "_block_num": pa.uint64(),
        "block_hash": pa.binary(32),
        "block_num": pa.uint64(),
        "tx_hash": pa.binary(32),
        "tx_index": pa.uint32(),
        "log_index": pa.uint32(),
        "address": pa.binary(20),
        "topic0": pa.binary(32),
        "topic3": pa.binary(32),
        "data": pa.binary(),
    },
}


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The command's one error line (stderr also carries log records of the server)."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("amp ")]
    assert len(lines) == 1, lines
    return lines[0]


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    assert main(["tables", *args, "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_listing_matches_the_servers_own_select_star_schema(
    amp_devserver: DevServer, capsys: pytest.CaptureFixture[str]
) -> None:
    document = run_json(capsys, "--server", amp_devserver.url)
    assert [entry["name"] for entry in document["tables"]] == [
        f"eth_firehose.{name}" for name in TABLES
    ]
    with connect(amp_devserver.url) as client:
        for entry in document["tables"]:
            streamed, _ = run_batch(client, f"SELECT * FROM {entry['name']} LIMIT 0")
            assert [(c["name"], c["type"], c["nullable"]) for c in entry["columns"]] == [
                (field.name, str(field.type), field.nullable) for field in streamed
            ]


def test_listing_has_the_types_of_protocol_section_6(
    amp_devserver: DevServer, capsys: pytest.CaptureFixture[str]
) -> None:
    document = run_json(capsys, "--server", amp_devserver.url)
    for entry in document["tables"]:
        listed = {c["name"]: c for c in entry["columns"]}
        expected = SPEC_TYPES[entry["table"]]
        assert {name: listed[name]["type"] for name in expected} == {
            name: str(arrow_type) for name, arrow_type in expected.items()
        }
        assert listed["_block_num"]["nullable"] is False
        assert next(iter(listed)) == "_block_num"


def test_text_output_names_every_column(
    amp_devserver: DevServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["tables", "--server", amp_devserver.url, "--table", "logs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "eth_firehose.logs (13 columns)"
    assert lines[1].split() == ["column", "type", "nullable"]
    rows = [line.split() for line in lines[2:]]
    assert rows[0] == ["_block_num", "uint64", "no"]
    assert ["topic0", "fixed_size_binary[32]", "yes"] in rows
    assert len(rows) == 13


def test_a_server_with_another_dataset_lists_that_dataset(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with DevServer(port=0, initial_blocks=5, dataset="other") as server:
        document = run_json(capsys, "--server", server.url, "--dataset", "other")
        assert [entry["name"] for entry in document["tables"]] == [
            f"other.{name}" for name in TABLES
        ]
        assert main(["tables", "--server", server.url]) == 2
        error = error_line(capsys)
        assert "NOT_FOUND" in error and "other.blocks" in error


def test_an_auth_token_server_refuses_without_the_token(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AMP_AUTH_TOKEN", raising=False)
    with DevServer(port=0, initial_blocks=5, auth_token="s3cret") as server:
        assert main(["tables", "--server", server.url]) == 2
        error = error_line(capsys)
        assert error.startswith("amp tables: error: GetFlightInfo failed with UNAUTHENTICATED")
        assert "UNAUTHENTICATED" in error and "--auth-token" in error
        assert "s3cret" not in error
        document = run_json(capsys, "--server", server.url, "--auth-token", "s3cret")
        assert len(document["tables"]) == 3


def _catalog_command(name: str, body: bytes) -> bytes:
    type_url = f"type.googleapis.com/arrow.flight.protocol.sql.{name}".encode()
    return protowire.encode_bytes_field(1, type_url) + protowire.encode_bytes_field(2, body)


@pytest.mark.parametrize(
    ("name", "body"),
    [
        ("CommandGetTables", protowire.encode_int_field(5, 1)),  # include_schema = true
        ("CommandGetDbSchemas", b""),
        ("CommandGetCatalogs", b""),
    ],
)
def test_flight_sql_catalog_commands_are_refused_as_on_a_real_server(
    amp_devserver: DevServer, name: str, body: bytes
) -> None:
    descriptor = flight.FlightDescriptor.for_command(_catalog_command(name, body))
    with connect(amp_devserver.url) as client, pytest.raises(pa.ArrowInvalid) as caught:
        client.get_flight_info(descriptor)
    assert (
        f"unsupported flight descriptor command: "
        f"type.googleapis.com/arrow.flight.protocol.sql.{name}" in str(caught.value)
    )
