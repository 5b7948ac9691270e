"""The dev server reads a trailing SETTINGS clause as the real server does (protocol §1):
comments and a ``;`` may follow it, a second clause is refused. Checked on the server's
own planner (``QueryEngine.plan``), which decides streaming at GetFlightInfo."""

from __future__ import annotations

import pytest

from amp.devserver.sql import QueryEngine, QueryError

BLOCKS = "SELECT * FROM eth_firehose.blocks"


@pytest.fixture
def engine() -> QueryEngine:
    return QueryEngine("eth_firehose", rows_per_message=100)


@pytest.mark.parametrize(
    ("suffix", "streaming"),
    [
        (" SETTINGS stream = true -- every block", True),
        (" SETTINGS stream = true /* every block */", True),
        (" SETTINGS stream = true; -- every block", True),
        (" SETTINGS /* c */ stream /* c */ = /* c */ true", True),
        (" SETTINGS foo = -1, stream = true -- x", True),
        (" SETTINGS stream = 1 -- x", False),
        (" SETTINGS stream = 'true' /* x */", False),
        (" -- SETTINGS stream = true", False),
        (" /* SETTINGS stream = true */", False),
    ],
)
def test_streaming_clause_followed_by_comments(
    engine: QueryEngine, suffix: str, streaming: bool
) -> None:
    planned = engine.plan(BLOCKS + suffix)
    assert planned.streaming is streaming
    assert planned.schema.equals(engine.plan(BLOCKS).schema)


@pytest.mark.parametrize(
    "suffix",
    [
        " SETTINGS stream = true -- x\nSETTINGS stream = true",
        " SETTINGS stream = true /* x */ SETTINGS stream = true",
        " SETTINGS max_threads = 4; -- x\nSETTINGS stream = true",
    ],
    ids=["line-comment", "block-comment", "semicolon-comment"],
)
def test_second_clause_after_a_comment_is_refused(engine: QueryEngine, suffix: str) -> None:
    with pytest.raises(QueryError, match="more than one SETTINGS clause") as raised:
        engine.plan(BLOCKS + suffix)
    assert raised.value.status == "INVALID_ARGUMENT"
