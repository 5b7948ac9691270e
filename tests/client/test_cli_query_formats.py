"""``amp query --format table|csv|json --output FILE`` and ``amp --version``, run as the
real command against the dev server; every value is compared with the chain's."""

from __future__ import annotations

import csv
import io
import json
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from amp.devserver import DevServer
from amp.version import pyproject_version
from ampcli import run_amp

pytestmark = pytest.mark.timeout(180)

BLOCKS = (
    "SELECT block_num, hash, timestamp, difficulty, total_difficulty, base_fee_per_gas, "
    "logs_bloom FROM eth_firehose.blocks WHERE block_num < 40"
)
COLUMNS = BLOCKS.removeprefix("SELECT ").split(" FROM")[0].split(", ")


@pytest.fixture(scope="module")
def server() -> Iterator[DevServer]:
    with DevServer(port=0, seed=7, initial_blocks=300, max_interval=25) as srv:
        yield srv


def expected_blocks(server: DevServer) -> list[dict[str, object]]:
    """The chain's first 40 blocks as the formats must print them."""
    table = server.chain.canonical_table("blocks")
    rows = table.filter(pa.compute.less(table.column("block_num"), 40)).to_pylist()
    rows.sort(key=lambda row: row["block_num"])
    assert len(rows) == 40
    expected = []
    for row in rows:
        expected.append(
            {
                "block_num": row["block_num"],
                "hash": "0x" + row["hash"].hex(),
                # Whole seconds in the dev server's chain: no fraction printed.
                "timestamp": row["timestamp"].isoformat(),
                "difficulty": str(row["difficulty"]),
                "total_difficulty": _maybe(row["total_difficulty"]),
                "base_fee_per_gas": _maybe(row["base_fee_per_gas"]),
                "logs_bloom": "0x" + row["logs_bloom"].hex(),
            }
        )
    return expected


def _maybe(value: object) -> str | None:
    return None if value is None else str(value)


def test_csv_has_whole_values(server: DevServer) -> None:
    done = run_amp("query", "--server", server.url, "--format", "csv", BLOCKS)
    assert done.returncode == 0, done.stderr
    lines = list(csv.DictReader(io.StringIO(done.stdout)))
    expected = expected_blocks(server)
    got = sorted(lines, key=lambda row: int(row["block_num"]))
    assert len(got) == len(expected)
    assert list(got[0]) == COLUMNS
    nulls = 0
    for row, want in zip(got, expected, strict=True):
        assert int(row["block_num"]) == want["block_num"]
        for column in COLUMNS[1:]:
            value = want[column]
            nulls += value is None
            assert row[column] == ("" if value is None else value), column
    # The chain has null total_difficulty / base_fee_per_gas: printed as empty fields.
    assert nulls > 0
    assert len(got[0]["logs_bloom"]) == 2 + 2 * 256  # 256 bytes, never truncated


def test_json_lines_have_whole_values(server: DevServer) -> None:
    done = run_amp("query", "--server", server.url, "--format", "json", BLOCKS)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    records.sort(key=lambda record: record["block_num"])
    assert records == expected_blocks(server)


def test_output_file_holds_every_row_of_a_large_result(server: DevServer, tmp_path: Path) -> None:
    target = tmp_path / "logs.csv"
    done = run_amp(
        "query",
        "--server",
        server.url,
        "--format",
        "csv",
        "--output",
        str(target),
        "SELECT block_num, tx_hash, log_index, data FROM eth_firehose.logs",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    logs = server.chain.canonical_table("logs")
    rows = list(csv.DictReader(target.open(encoding="utf-8")))
    assert len(rows) == logs.num_rows
    assert f"wrote {logs.num_rows:,} rows to {target}" in done.stderr
    wanted = {
        ("0x" + tx.hex(), index)
        for tx, index in zip(
            logs.column("tx_hash").to_pylist(), logs.column("log_index").to_pylist(), strict=True
        )
    }
    assert {(row["tx_hash"], int(row["log_index"])) for row in rows} == wanted
    assert list(tmp_path.iterdir()) == [target]  # no .partial left


def test_failed_query_leaves_no_file(server: DevServer, tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    done = run_amp(
        "query",
        "--server",
        server.url,
        "--format",
        "json",
        "--output",
        str(target),
        "SELECT nope FROM eth_firehose.no_such_table",
    )
    assert done.returncode == 2
    assert "amp query: error" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_table_format_is_the_default(server: DevServer) -> None:
    done = run_amp(
        "query",
        "--server",
        server.url,
        "SELECT block_num FROM eth_firehose.blocks WHERE block_num < 3",
    )
    assert done.returncode == 0, done.stderr
    assert "block_num" in done.stdout
    assert done.stdout.rstrip().endswith("3 rows")


def test_version_is_the_package_version() -> None:
    done = run_amp("--version")
    assert done.returncode == 0
    with (Path(__file__).parents[2] / "pyproject.toml").open("rb") as file:
        version = tomllib.load(file)["project"]["version"]
    assert done.stdout == f"amp {version}\n"


def test_version_falls_back_to_pyproject(tmp_path: Path) -> None:
    project = tmp_path / "pyproject.toml"
    project.write_text('[project]\nname = "amp-python"\nversion = "9.8.7"\n')
    assert pyproject_version(project) == "9.8.7"
    assert pyproject_version(tmp_path / "missing.toml") == "0.0.0"
