"""The custom loader of docs/loaders.md, run from the page itself so that the example
cannot drift: its code block is executed as a module, registered as ``ndjson``, and
streamed into from the dev server through new blocks, reorgs, a stream cut half-way
through a microbatch and a restart. Each time the files hold exactly the canonical
chain: every row once, none of a replaced block."""

from __future__ import annotations

import json
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from oracle import LogKey, assert_log_keys_equal, canonical_log_keys, json_log_key
from streamdriver import checked

from amp.client import Client
from amp.devserver import DevServer
from amp.devserver.chain import SimulatedChain
from amp.errors import ConfigError
from amp.loaders import LOADERS, register_loader
from amp.loaders.base import DataLoader
from kit import Action, Mine, Reorg, assert_reorgs_reported, drive

pytestmark = pytest.mark.timeout(60)

DOC = Path(__file__).resolve().parents[2] / "docs" / "loaders.md"
MARKER = "<!-- example: ndjson-loader -->"
QUERY = "SELECT * FROM eth_firehose.logs"


def example_source() -> str:
    """The Python block right after the example marker of docs/loaders.md."""
    text = DOC.read_text(encoding="utf-8")
    assert MARKER in text, f"{DOC} lost its example marker {MARKER!r}"
    found = re.match(r"\s*```python\n(.*?)\n```", text.split(MARKER, 1)[1], re.DOTALL)
    assert found is not None, f"no ```python block right after {MARKER!r} in {DOC}"
    return found.group(1)


@pytest.fixture(scope="module")
def ndjson() -> Iterator[type[DataLoader]]:
    """The documented loader class, its module executed from the page (and registered
    as 'ndjson' by its own decorator); unregistered when the module's tests end."""
    module = types.ModuleType("docs_loaders_ndjson_example")
    sys.modules[module.__name__] = module  # dataclasses resolve annotations through it
    try:
        exec(compile(example_source(), str(DOC), "exec"), module.__dict__)
        loader: type[DataLoader] = module.NDJSONLoader
        assert LOADERS["ndjson"] is loader
        yield loader
    finally:
        LOADERS.pop("ndjson", None)
        del sys.modules[module.__name__]


def file_keys(directory: Path, table: str) -> list[LogKey]:
    """The key of every line of every file of ``table``; each file holds only the rows
    of the block it is named after."""
    keys = []
    for path in sorted((directory / table).glob("*.ndjson")):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            assert row["_block_num"] == int(path.stem), f"{path.name} holds a row of another block"
            keys.append(json_log_key(row))
    return keys


def assert_files_equal_chain(directory: Path, table: str, chain: SimulatedChain) -> int:
    """The files hold exactly the canonical logs; returns how many rows."""
    actual = file_keys(directory, table)
    assert_log_keys_equal(actual, canonical_log_keys(chain), f"files of {table}")
    return len(actual)


def files_client(srv: DevServer, directory: Path, **extra: object) -> Client:
    client = Client(srv.url)
    client.configure_connection("files", "ndjson", {"directory": str(directory), **extra})
    return client


def test_the_documented_loader_streams_through_new_blocks_and_reorgs(
    ndjson: type[DataLoader], tmp_path: Path
) -> None:
    max_interval = 10
    reorgs = [Reorg(1), Reorg(3, mine=4), Reorg(14, mine=2)]  # the last spans 2 microbatches
    actions: list[Action] = [Mine(5), reorgs[0], Mine(12), reorgs[1], reorgs[2], Mine(3)]
    with DevServer(
        port=0, seed=11, initial_blocks=60, max_interval=max_interval, rows_per_message=16
    ) as srv:
        client = files_client(srv, tmp_path)
        try:
            run = client.sql(QUERY).load("files", "logs", stream=True)
            driven = drive(run, srv.chain, actions, checked(srv.chain, "logs"))
        finally:
            client.close()
        assert driven.ranges()[:6] == [(start, start + 9) for start in range(0, 60, 10)]
        assert_reorgs_reported(driven, reorgs, max_interval)
        assert assert_files_equal_chain(tmp_path, "logs", srv.chain) > 0


def test_a_microbatch_cut_half_way_is_deleted_and_written_again(
    ndjson: type[DataLoader], tmp_path: Path
) -> None:
    """The stream drops after 3 of the first microbatch's data messages were written to
    the files: the reconnect sends that microbatch again, and since the loader has no
    transactions amp deletes its blocks' files before writing it."""
    with DevServer(port=0, seed=2, initial_blocks=30, max_interval=10, rows_per_message=16) as srv:
        blocks = srv.chain.canonical_table("logs")["block_num"].to_pylist()
        assert sum(block < 10 for block in blocks) > 3 * 16, (
            "the first microbatch must span 4+ messages"
        )
        srv.faults.cut_stream_after(messages=4)  # the schema message and 3 data messages
        client = files_client(srv, tmp_path, resilience={"retry": {"initial_backoff_ms": 5}})
        try:
            run = client.sql(QUERY).load("files", "logs", stream=True)
            driven = drive(run, srv.chain, (), checked(srv.chain, "logs"))
        finally:
            client.close()
        assert driven.ranges() == [(0, 9), (10, 19), (20, 29)]
        assert assert_files_equal_chain(tmp_path, "logs", srv.chain) > 0


def test_a_restart_without_state_repairs_what_changed_while_stopped(
    ndjson: type[DataLoader], tmp_path: Path
) -> None:
    """No state store, so no checkpoint: the second load starts the query over. Every
    microbatch deletes its blocks' files first, so blocks replaced by a reorg while
    the load was stopped end with the new fork's rows only."""
    with DevServer(port=0, seed=4, initial_blocks=40, max_interval=10, rows_per_message=16) as srv:
        load_to_head(srv, tmp_path)
        assert_files_equal_chain(tmp_path, "logs", srv.chain)
        srv.chain.reorg(6)
        srv.chain.mine(7)
        load_to_head(srv, tmp_path)
        assert_files_equal_chain(tmp_path, "logs", srv.chain)
        assert len(srv.chain.reorgs) == 1


def load_to_head(srv: DevServer, directory: Path, **options: str) -> None:
    """Stream into the files until the load has caught up with the head, then stop."""
    client = files_client(srv, directory)
    try:
        drive(client.sql(QUERY).load("files", "logs", stream=True, **options), srv.chain)
    finally:
        client.close()


def test_overwrite_starts_the_table_afresh(ndjson: type[DataLoader], tmp_path: Path) -> None:
    stale = tmp_path / "logs" / "999999.ndjson"
    stale.parent.mkdir(parents=True)
    stale.write_text('{"_block_num": 999999}\n', encoding="utf-8")
    with DevServer(port=0, seed=6, initial_blocks=20, max_interval=10) as srv:
        load_to_head(srv, tmp_path, mode="overwrite")
        assert not stale.exists()
        assert_files_equal_chain(tmp_path, "logs", srv.chain)


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({}, "ndjson config needs 'directory'"),
        ({"directory": 7}, "ndjson config['directory'] must be str, got 7"),
        (
            {"directroy": "out"},
            "unknown key 'directroy' in ndjson config (did you mean 'directory'?)",
        ),
        (
            {"directory": "out", "checkpoint": {"enabled": True}},
            "the ndjson loader cannot keep checkpoints or processed ranges in its destination "
            "(it has no state_store())",
        ),
    ],
)
def test_its_config_is_checked_at_configure_time(
    ndjson: type[DataLoader], config: dict[str, object], words: str
) -> None:
    client = Client("grpc://127.0.0.1:1")  # nothing is contacted before a load
    try:
        with pytest.raises(ConfigError) as raised:
            client.configure_connection("files", "ndjson", config)
        assert words in str(raised.value)
        assert "files" not in client.list_connections()
    finally:
        client.close()


def test_a_name_is_held_by_one_loader(ndjson: type[DataLoader]) -> None:
    """Registering the documented class again is fine (a module imported twice); another
    class under its name, or any class under a built-in name, is refused."""
    assert register_loader("ndjson", ndjson) is ndjson

    class Other(ndjson):  # type: ignore[valid-type, misc]
        pass

    with pytest.raises(ConfigError, match="'ndjson' is already registered to docs_loaders"):
        register_loader("ndjson", Other)
    with pytest.raises(ConfigError, match="'duckdb' is one of amp's own loaders"):
        register_loader("duckdb", Other)
    with pytest.raises(ConfigError, match="a loader name is lower-case"):
        register_loader("NDJSON files", Other)
    assert LOADERS["ndjson"] is ndjson
