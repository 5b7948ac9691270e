"""``SETTINGS stream = true`` is appended only when the query has no SETTINGS clause
(protocol §1: never a second clause); a query with other settings streams through the
``amp-stream`` header instead.

How a test can tell: with ``max_interval=100`` a streaming query arrives in microbatches
of at most 100 blocks and goes on after new blocks; a query the server ran as a batch
arrives as one range ``0..head``; a query with two SETTINGS clauses is rejected by the
server (INVALID_ARGUMENT), which ends the load with a fatal error.
"""

from __future__ import annotations

import pytest
from oracle import Destination, connected

from amp.client import Client, LoadResult
from amp.devserver import DevServer, settings_clause
from kit import Mine, Reorg, assert_reorgs_reported, assert_table_equals_chain, block_range, drive

pytestmark = pytest.mark.timeout(60)

MAX_INTERVAL = 100


def _only_microbatches(result: LoadResult) -> None:
    if result.metadata.get("operation") != "load":
        return
    numbers = block_range(result)
    size = numbers["end"] - numbers["start"] + 1
    assert size <= MAX_INTERVAL, (
        f"a range of {size} blocks ({numbers['start']}..{numbers['end']}) is larger than the "
        f"server's max_interval {MAX_INTERVAL}: the server ran the query as a batch query, "
        "so it never saw a streaming request"
    )


def _assert_streams(destination: Destination, query: str) -> None:
    table = destination.new_table("settings")
    reorgs = [Reorg(2, mine=3, table="blocks")]
    with (
        DevServer(port=0, seed=1, initial_blocks=300, max_interval=MAX_INTERVAL) as srv,
        connected(srv, destination) as client,
    ):
        run = client.sql(query).load("dest", table, stream=True)
        driven = drive(run, srv.chain, [Mine(4), *reorgs], on_result=_only_microbatches)
        assert driven.ranges()[:4] == [(0, 99), (100, 199), (200, 299), (300, 303)]
        assert_reorgs_reported(driven, reorgs, MAX_INTERVAL)
        assert_table_equals_chain(destination, table, srv.chain, "blocks")


@pytest.mark.parametrize(
    "query",
    [
        "SELECT * FROM eth_firehose.blocks",
        "SELECT * FROM eth_firehose.blocks;",
        "SELECT * FROM eth_firehose.blocks WHERE extra_data <> X'00' OR 'SETTINGS' = 'x'",
    ],
    ids=["plain", "semicolon", "settings-in-string"],
)
def test_query_without_settings_gets_the_clause(destination: Destination, query: str) -> None:
    _assert_streams(destination, query)


@pytest.mark.parametrize(
    "query",
    [
        "SELECT * FROM eth_firehose.blocks SETTINGS stream = true",
        "SELECT * FROM eth_firehose.blocks\nsettings STREAM = TRUE;",
        "SELECT * FROM eth_firehose.blocks SETTINGS stream = true -- every block",
        "SELECT * FROM eth_firehose.blocks SETTINGS stream = true /* every block */",
        "SELECT * FROM eth_firehose.blocks SETTINGS stream = true; -- every block",
    ],
    ids=["exact", "lowercase-semicolon", "line-comment", "block-comment", "semicolon-comment"],
)
def test_query_already_streaming_is_sent_unchanged(destination: Destination, query: str) -> None:
    """A second ``SETTINGS stream = true`` would be a server error (INVALID_ARGUMENT)."""
    _assert_streams(destination, query)


@pytest.mark.parametrize(
    "query",
    [
        "SELECT * FROM eth_firehose.blocks SETTINGS max_threads = 4",
        "SELECT * FROM eth_firehose.blocks SETTINGS stream = 1",
        "SELECT * FROM eth_firehose.blocks SETTINGS foo = 'bar', stream = false",
    ],
    ids=["other-key", "stream-1", "stream-false"],
)
def test_query_with_other_settings_streams_via_header(destination: Destination, query: str) -> None:
    _assert_streams(destination, query)


def test_query_ending_in_a_line_comment_streams(destination: Destination) -> None:
    """A query may end with a ``--`` comment; the clause must not land inside it."""
    _assert_streams(destination, "SELECT * FROM eth_firehose.blocks -- every block")


@pytest.mark.parametrize(
    ("query", "header"),
    [
        ("SELECT * FROM eth_firehose.blocks", None),
        ("SELECT * FROM eth_firehose.blocks;", None),
        ("SELECT * FROM eth_firehose.blocks SETTINGS stream = true", None),
        ("SELECT * FROM eth_firehose.blocks\nsettings STREAM = TRUE;", None),
        ("SELECT * FROM eth_firehose.blocks SETTINGS max_threads = 4", True),
        ("SELECT * FROM eth_firehose.blocks SETTINGS stream = 1", True),
        ("SELECT * FROM eth_firehose.blocks SETTINGS foo = 'bar', stream = false", True),
        ("SELECT * FROM eth_firehose.blocks -- every block", None),
        ("SELECT * FROM eth_firehose.blocks /* every block */", None),
        ("SELECT * FROM eth_firehose.blocks SETTINGS stream = true -- x", None),
        ("SELECT * FROM eth_firehose.blocks SETTINGS stream = true /* x */", None),
        ("SELECT * FROM eth_firehose.blocks SETTINGS stream = true; -- x", None),
        ("SELECT * FROM eth_firehose.blocks SETTINGS max_threads = 4 -- x", True),
        ("SELECT * FROM eth_firehose.blocks SETTINGS stream = 'true' /* x */", True),
    ],
    ids=[
        "plain",
        "semicolon",
        "exact",
        "lowercase-semicolon",
        "other-key",
        "stream-1",
        "stream-false",
        "line-comment",
        "block-comment",
        "streaming-then-line-comment",
        "streaming-then-block-comment",
        "streaming-semicolon-comment",
        "other-key-then-comment",
        "string-true-then-comment",
    ],
)
def test_the_sql_sent_has_exactly_one_settings_clause(query: str, header: bool | None) -> None:
    """What the client sends, read as the dev server reads it (its own lexer, no code
    shared with the client's sqlglot reading, so neither can hide the other's bug): at
    most one top-level SETTINGS clause, and streaming requested by it or by the header."""
    client = Client("grpc://127.0.0.1:1")  # never connects: nothing is sent
    try:
        sql, sent_header = client.sql(query)._streaming_sql()
    finally:
        client.close()
    assert sent_header is header
    body, settings = settings_clause.split_settings(sql)
    assert settings_clause.split_settings(body) == (body, {}), f"two SETTINGS clauses in {sql!r}"
    if header is None:
        assert settings_clause.requests_streaming(settings), (
            f"{sql!r} does not request streaming as the server reads it: {settings}"
        )
        if settings_clause.split_settings(query)[1]:
            assert sql == query, "a query that already streams must be sent unchanged"
    else:
        assert sql == query, "a query with its own SETTINGS must be sent unchanged"
