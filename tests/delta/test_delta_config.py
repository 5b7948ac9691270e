"""Bad Delta configuration fails at configure time with a ConfigError naming the key;
the ``--to deltalake://`` URL forms; storage_options secrets never shown; and one
writer per stream (a second load of a stream is refused, by the file lock and by the
fence in the log that object stores rely on)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from delta_support import TABLE, delta_config

from amp.client import Client
from amp.destination_url import destination_from_url
from amp.devserver import DevServer
from amp.errors import ConfigError, StreamOwnedError
from amp.loaders.base import LoadMode
from amp.loaders.delta.loader import DeltaLakeLoader
from amp.streaming.types import BlockRange

SECRET = "wJalrXUtnFEMI-K7MDENG-s3cr3t"


@pytest.fixture(scope="module")
def server() -> Iterator[DevServer]:
    with DevServer(port=0, seed=1, initial_blocks=5) as srv:
        yield srv


def configure(server: DevServer, config: dict[str, Any]) -> None:
    client = Client(server.url)
    try:
        client.configure_connection("bad", "deltalake", config)
    finally:
        client.close()


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({}, "needs 'table_path'"),
        ({"table_path": 7}, "'table_path'"),
        ({"table_path": "  "}, "'table_path'] is empty"),
        ({"table_path": "/t", "compression": "ZIP"}, "'compression'] must be one of"),
        ({"table_path": "/t", "partition_by": [1]}, "'partition_by'] must be a column name"),
        ({"table_path": "/t", "storage_options": {"k": 1}}, "'storage_options'] must be a"),
        ({"table_path": "/t", "configuration": ["x"]}, "'configuration'] must be a"),
        ({"table_path": "/t", "target_file_size": 0}, "target_file_size"),
        ({"table_path": "/t", "target_file_size": "big"}, "target_file_size"),
        ({"table_path": "/t", "compact_every": -1}, "compact_every"),
        ({"table_path": "/t", "tablepath": "/x"}, "tablepath"),
    ],
)
def test_bad_config_is_refused_at_configure_time(
    server: DevServer, config: dict[str, Any], words: str
) -> None:
    with pytest.raises(ConfigError, match=None) as raised:
        configure(server, config)
    assert words in str(raised.value), str(raised.value)


def test_partition_column_must_be_a_column(tmp_path: Path) -> None:
    loader = DeltaLakeLoader(delta_config(tmp_path, partition_by=["nope"]))
    loader.connect()
    schema = pa.schema([("_block_num", pa.uint64())])
    with pytest.raises(ConfigError, match=r"partition_by.*nope"):
        loader.prepare_table(TABLE, schema, LoadMode.APPEND, "_block_num")


@pytest.mark.parametrize("name", ["a/b", "../x", "_amp_locks", ".hidden"])
def test_table_names_that_are_not_one_directory_are_refused(tmp_path: Path, name: str) -> None:
    loader = DeltaLakeLoader(delta_config(tmp_path))
    with pytest.raises(ConfigError, match="letters, digits"):
        loader.location(name)


def test_storage_option_secrets_are_never_shown(tmp_path: Path) -> None:
    options = {"AWS_SECRET_ACCESS_KEY": SECRET, "AWS_REGION": "eu-west-1"}
    loader = DeltaLakeLoader(
        {"table_path": "s3://user:pw@bucket/prefix", "storage_options": options}
    )
    for text in (repr(loader), loader.describe(), loader.describe_table("t")):
        assert SECRET not in text and "pw@" not in text, text
    from amp.redact import redact_text

    assert SECRET not in redact_text(f"delta-rs said: bad key {SECRET}")


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("deltalake:///data/tables", "/data/tables"),
        ("deltalake:///data/my%20tables", "/data/my tables"),
        ("deltalake+s3://bucket/prefix", "s3://bucket/prefix"),
        ("deltalake+abfss://container@account.dfs.core.windows.net/p", None),
    ],
)
def test_url_forms(url: str, path: str | None) -> None:
    loader, config = destination_from_url(url)
    assert loader == "deltalake"
    if path is not None:
        assert config == {"table_path": path}


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("deltalake://relative/x", "is not a path"),
        ("deltalake:///", "absolute directory"),
        ("deltalake:///x?mode=1", "unknown URL parameters"),
        ("deltalake+ftp://host/x", "unknown object store 'ftp'"),
        ("deltalake+s3:///x", "the bucket is missing"),
    ],
)
def test_bad_urls_name_the_part(url: str, words: str) -> None:
    with pytest.raises(ConfigError) as raised:
        destination_from_url(url)
    assert words in str(raised.value) and "e.g. deltalake:///" in str(raised.value)


def _commit_rows(loader: DeltaLakeLoader, block: int) -> None:
    loader.begin()
    batch = pa.record_batch({"_block_num": pa.array([block], pa.uint64())})
    loader.write(TABLE, batch, BlockRange("mainnet", block, block))
    loader.commit()


def _loader(tmp_path: Path) -> DeltaLakeLoader:
    loader = DeltaLakeLoader(delta_config(tmp_path), connection_name="c")
    loader.ensure_connected()
    schema = pa.schema([("_block_num", pa.uint64())])
    loader.prepare_table(TABLE, schema, LoadMode.APPEND, "_block_num")
    return loader


def test_a_second_writer_of_a_stream_is_refused_by_the_lock(tmp_path: Path) -> None:
    first, second = _loader(tmp_path), _loader(tmp_path)
    try:
        first.claim_stream(TABLE, 0)
        with pytest.raises(StreamOwnedError, match=r"PID \d+"):
            second.claim_stream(TABLE, 0)
        second.claim_stream(TABLE, 1)  # another worker's stream is free
        first.close()
        second.claim_stream(TABLE, 0)  # released with the first loader
    finally:
        first.close()
        second.close()


def test_the_fence_stops_a_writer_whose_stream_another_load_wrote(tmp_path: Path) -> None:
    """Without a lock (an object store has none), two loaders claim the same stream; the
    first commit raises the fence, and the other's next commit is refused."""
    first, second = _loader(tmp_path), _loader(tmp_path)
    first.local = second.local = False  # what a table_path in an object store gets
    try:
        first.claim_stream(TABLE, 0)
        second.claim_stream(TABLE, 0)
        _commit_rows(first, 1)
        with pytest.raises(StreamOwnedError, match="fence version 1, expected 0"):
            _commit_rows(second, 2)
        _commit_rows(first, 3)  # the first writer goes on
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize("mode", ["auto", "transactional"])
def test_the_idempotency_mode_is_transactional(tmp_path: Path, mode: str) -> None:
    client = Client("grpc://127.0.0.1:1")  # configure only: nothing is contacted
    try:
        config = {**delta_config(tmp_path), "idempotency": {"enabled": True, "mode": mode}}
        client.configure_connection("dest", "deltalake", config)
        assert client._get_loader("dest").idempotency_mode == "transactional"
    finally:
        client.close()
