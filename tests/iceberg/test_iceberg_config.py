"""Bad Iceberg configuration fails at configure time with a ConfigError naming the key
and the fix; secrets of ``catalog_config`` (passwords, tokens, credentials, userinfo in
URIs) never appear in an error, a repr or a description; the ``--to`` URL forms map to
the catalog they name, and a malformed one is refused naming the part."""

from __future__ import annotations

from typing import Any

import pytest
from iceberg_support import Lake

from amp.client import Client
from amp.destination_url import destination_from_url
from amp.devserver import DevServer
from amp.errors import ConfigError, FatalLoadError
from amp.loaders.iceberg.loader import IcebergLoader

SECRET = "s3cret-Pa55word"
SQLITE = {"type": "sql", "uri": "sqlite:////tmp/never/catalog.db", "warehouse": "file:///tmp/w"}


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({}, "needs 'catalog_config'"),
        ({"catalog_config": {}}, "non-empty dict"),
        ({"catalog_config": {"warehouse": "file:///x"}}, "needs 'type'"),
        ({"catalog_config": {"type": "sqlite"}}, "'type'] must be one of"),
        ({"catalog_config": {"type": "sql", "warehouse": "file:///x"}}, "needs 'uri'"),
        ({"catalog_config": {"type": "sql", "uri": "not a url"}}, "is not a SQLAlchemy URL"),
        ({"catalog_config": {"type": "sql", "uri": "sqlite:////x.db"}}, "needs 'warehouse'"),
        (
            {"catalog_config": {**SQLITE, "uri": "postgresql+psycopg2://u@h/db"}},
            "'postgresql+psycopg://...'",
        ),
        ({"catalog_config": SQLITE, "namespace": "a..b"}, "['namespace']"),
        ({"catalog_config": SQLITE, "namespace": 3}, "['namespace'] must be str"),
        ({"catalog_config": SQLITE, "timestamp_ns": "round"}, "'truncate'"),
        ({"catalog_config": SQLITE, "commit_retries": -1}, "['commit_retries'] must be >= 0"),
        ({"catalog_config": SQLITE, "partition_spec": "block_num"}, "must be a list"),
        ({"catalog_config": SQLITE, "max_snapshots": 5}, "or at least 10"),
        (
            {"catalog_config": SQLITE, "partition_spec": [{"column": "b", "transform": "bucket"}]},
            "bucket[N] or truncate[N]",
        ),
        (
            {
                "catalog_config": SQLITE,
                "partition_spec": [{"column": "b", "transform": "day", "x": 1}],
            },
            "'column', 'transform' and optionally 'name'",
        ),
        ({"catalog_config": SQLITE, "table_properties": {"amp.checkpoint:x": "1"}}, "'amp.'"),
        (
            {"catalog_config": SQLITE, "partition_spec": [{"column": "b", "transform": "day"}]},
            "pyiceberg-core installed",
        ),
        ({"catalog_config": SQLITE, "table_propertes": {}}, "did you mean 'table_properties'"),
    ],
)
def test_bad_config_is_refused_at_configure_time(config: dict[str, Any], words: str) -> None:
    with DevServer(port=0, seed=1, initial_blocks=3) as server:
        client = Client(server.url)
        try:
            with pytest.raises(ConfigError) as raised:
                client.configure_connection("bad", "iceberg", config)
        finally:
            client.close()
    assert words in str(raised.value), str(raised.value)


def test_secrets_never_shown() -> None:
    catalog = {
        "type": "sql",
        "uri": f"postgresql+psycopg://postgres:{SECRET}@127.0.0.1:1/test",
        "warehouse": "file:///tmp/w",
        "s3.secret-access-key": f"{SECRET}-key",
        "token": f"{SECRET}-token",
        "credential": f"client:{SECRET}-cred",
    }
    loader = IcebergLoader({"catalog_config": catalog}, "c")
    shown = " ".join([repr(loader), loader.describe(), str(loader.settings.catalog_shown)])
    assert SECRET not in shown, shown
    with pytest.raises(ConfigError) as raised:
        IcebergLoader({"catalog_config": {**catalog, "type": "nope"}}, "c")
    assert SECRET not in str(raised.value)


def test_unreachable_catalog_fails_the_load_without_the_password(lake: Lake) -> None:
    catalog = {
        "type": "sql",
        "uri": f"postgresql+psycopg://postgres:{SECRET}@127.0.0.1:1/test",
        "warehouse": f"file://{lake.directory}/warehouse",
    }
    config = {"catalog_config": catalog, "resilience": {"retry": {"enabled": False}}}
    with DevServer(port=0, seed=1, initial_blocks=5) as server:
        client = Client(server.url)
        try:
            client.configure_connection("bad", "iceberg", config)
            run = client.sql("SELECT * FROM eth_firehose.logs").load("bad", "t", stream=True)
            with pytest.raises(FatalLoadError) as raised:
                list(run)
            run.close()
        finally:
            client.close()
    text = str(raised.value)
    assert "Iceberg: opening the catalog" in text and SECRET not in text, text


def test_partition_column_missing_from_the_rows_is_named(lake: Lake) -> None:
    config = lake.config(partition_spec=[{"column": "nope", "transform": "identity"}])
    with DevServer(port=0, seed=1, initial_blocks=5) as server:
        client = Client(server.url)
        try:
            client.configure_connection("part", "iceberg", config)
            with pytest.raises((ConfigError, FatalLoadError), match="names column 'nope'"):
                list(client.sql("SELECT * FROM eth_firehose.logs").load("part", "t"))
        finally:
            client.close()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "iceberg:///data/lake",
            {
                "catalog_config": {
                    "type": "sql",
                    "uri": "sqlite:////data/lake/catalog.db",
                    "warehouse": "file:///data/lake/warehouse",
                }
            },
        ),
        (
            "iceberg:///data/lake?namespace=raw.eth&catalog_name=prod",
            {
                "catalog_config": {
                    "type": "sql",
                    "uri": "sqlite:////data/lake/catalog.db",
                    "warehouse": "file:///data/lake/warehouse",
                },
                "namespace": "raw.eth",
                "catalog_name": "prod",
            },
        ),
        (
            "iceberg+postgresql://postgres@127.0.0.1:5432/test?warehouse=/data/wh",
            {
                "catalog_config": {
                    "type": "sql",
                    "uri": "postgresql+psycopg://postgres@127.0.0.1:5432/test",
                    "warehouse": "file:///data/wh",
                }
            },
        ),
        (
            "iceberg+postgresql://h/db?warehouse=s3://bucket/lake&namespace=x",
            {
                "catalog_config": {
                    "type": "sql",
                    "uri": "postgresql+psycopg://h/db",
                    "warehouse": "s3://bucket/lake",
                },
                "namespace": "x",
            },
        ),
    ],
)
def test_url_forms(url: str, expected: dict[str, Any]) -> None:
    assert destination_from_url(url) == ("iceberg", expected)


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("iceberg://", "the directory is missing"),
        ("iceberg:///x?warehouse=/y", "unknown URL parameter 'warehouse'"),
        ("iceberg+postgresql://h/db", "?warehouse="),
        ("iceberg+postgresql://h:99999/db?warehouse=/w", "the port '99999'"),
        ("iceberg+postgresql://h/?warehouse=/w", "the catalog's database is missing"),
        (f"iceberg+postgresql://u:{SECRET}@h/db?warehouse=/w&x=1", "unknown URL parameter 'x'"),
    ],
)
def test_bad_url_is_refused_naming_the_part(url: str, words: str) -> None:
    with pytest.raises(ConfigError) as raised:
        destination_from_url(url)
    text = str(raised.value)
    assert words in text and "e.g. iceberg:///" in text and SECRET not in text, text
