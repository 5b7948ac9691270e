"""The reader enforces protocol §2-§3 on scripted message sequences (no transport):
every rule violation is a ProtocolError raised before the bad message yields anything;
a repeat of the last completed range is ignored, never a reorg."""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pytest

from amp.errors import ProtocolError
from amp.flight.transport import FlightMessage
from amp.streaming.reader import Data, MicrobatchEnd, MicrobatchReader, Reorg, StreamEvent
from amp.streaming.types import BlockRange

SCHEMA = pa.schema([("block_num", pa.uint64())])


def block_hash(number: int, fork: int = 0) -> str:
    """A well-formed hash of block ``number`` on fork ``fork`` (0 is the first chain)."""
    return f"0x{fork:02x}{number:062x}"


def wire_range(
    start: int, end: int, *, network: str = "mainnet", fork: int = 0, parent_fork: int = 0
) -> dict[str, Any]:
    return {
        "network": network,
        "numbers": {"start": start, "end": end},
        "hash": block_hash(end, fork),
        "prev_hash": block_hash(start - 1, parent_fork) if start > 0 else None,
        "timestamp": 1_700_000_000 + end,
    }


def message(
    ranges: dict[str, Any] | list[dict[str, Any]] | None,
    *,
    rows: int = 0,
    complete: bool = False,
    raw: bytes | None = None,
) -> FlightMessage:
    batch = pa.RecordBatch.from_pylist([{"block_num": n} for n in range(rows)], schema=SCHEMA)
    if raw is not None:
        return FlightMessage(batch, raw)
    if ranges is None:
        return FlightMessage(batch, None)
    listed = ranges if isinstance(ranges, list) else [ranges]
    metadata = {"ranges": listed, "ranges_complete": complete}
    return FlightMessage(batch, json.dumps(metadata).encode())


def microbatch(wire: dict[str, Any], rows: int = 2) -> list[FlightMessage]:
    """Two data messages and the zero-row marker, all with the same range."""
    return [message(wire, rows=rows), message(wire, rows=rows), message(wire, complete=True)]


def read(messages: list[FlightMessage], last: BlockRange | None = None) -> list[StreamEvent]:
    return list(MicrobatchReader(last).events(messages))


def read_until_error(
    messages: list[FlightMessage], last: BlockRange | None = None
) -> tuple[list[StreamEvent], ProtocolError]:
    events: list[StreamEvent] = []
    with pytest.raises(ProtocolError) as caught:
        for event in MicrobatchReader(last).events(messages):
            events.append(event)
    return events, caught.value


def spans(events: list[StreamEvent]) -> list[tuple[str, int, int]]:
    out = []
    for event in events:
        if isinstance(event, Data):
            assert event.block_range is not None
            out.append(("data", event.block_range.start, event.block_range.end))
        elif isinstance(event, MicrobatchEnd):
            out.append(("end", event.block_range.start, event.block_range.end))
        else:
            out.append(("reorg", event.invalidated.start, event.invalidated.end))
    return out


# -- the normal sequence -----------------------------------------------------------------


def test_contiguous_microbatches_with_repeated_ranges_and_keepalives() -> None:
    first, second = wire_range(0, 9), wire_range(10, 19)
    keepalive = message(second)  # zero rows, ranges_complete false
    events = read([*microbatch(first), keepalive, *microbatch(second)])
    assert spans(events) == [
        ("data", 0, 9),
        ("data", 0, 9),
        ("end", 0, 9),
        ("data", 10, 19),
        ("data", 10, 19),
        ("end", 10, 19),
    ]


def test_a_differing_backward_range_is_a_reorg_of_the_union() -> None:
    events = read(
        [
            *microbatch(wire_range(0, 9)),
            *microbatch(wire_range(10, 19)),
            *microbatch(wire_range(15, 17, fork=1)),
        ]
    )
    reorgs = [e for e in events if isinstance(e, Reorg)]
    assert len(reorgs) == 1
    assert (reorgs[0].invalidated.start, reorgs[0].invalidated.end) == (15, 19)
    assert spans(events)[-4:] == [
        ("reorg", 15, 19),
        ("data", 15, 17),
        ("data", 15, 17),
        ("end", 15, 17),
    ]


def test_a_reorg_detected_against_the_resume_cursor() -> None:
    cursor = BlockRange("mainnet", 19, 19, hash=block_hash(19))
    events = read(microbatch(wire_range(18, 20, fork=1)), last=cursor)
    assert spans(events)[0] == ("reorg", 18, 20)


def test_the_chain_returning_to_a_forgotten_fork_is_a_reorg_again() -> None:
    """0..9, 10..19, reorg to 10..19 of fork 1, then back to the original 10..19: the
    original range was reorged away, so seeing it again is a reorg, not a stale repeat."""
    events = read(
        [
            *microbatch(wire_range(0, 9)),
            *microbatch(wire_range(10, 19)),
            *microbatch(wire_range(10, 19, fork=1)),
            *microbatch(wire_range(10, 19)),
        ]
    )
    assert [s for s in spans(events) if s[0] == "reorg"] == [("reorg", 10, 19)] * 2


def test_prev_hash_null_and_absent_timestamp_are_accepted() -> None:
    wire = wire_range(5, 9)
    wire["prev_hash"] = None
    del wire["timestamp"]
    wire["unknown_key"] = {"ignored": True}
    assert spans(read(microbatch(wire))) == [("data", 5, 9), ("data", 5, 9), ("end", 5, 9)]


def test_hashes_are_compared_case_insensitively() -> None:
    first, second = wire_range(0, 9), wire_range(10, 19)
    second["prev_hash"] = second["prev_hash"].upper().replace("0X", "0x")
    events = read([*microbatch(first), *microbatch(second)])
    assert not [e for e in events if isinstance(e, Reorg)]


# -- a repeated range ------------------------------------------------------------------------


def test_a_repeated_marker_of_the_last_range_is_ignored_not_a_reorg() -> None:
    first, second = wire_range(0, 9), wire_range(10, 19)
    events = read(
        [
            *microbatch(first),
            message(first, complete=True),
            message(first, complete=True),
            *microbatch(second),
        ]
    )
    assert spans(events) == [
        ("data", 0, 9),
        ("data", 0, 9),
        ("end", 0, 9),
        ("data", 10, 19),
        ("data", 10, 19),
        ("end", 10, 19),
    ]


def test_a_replay_of_the_whole_last_microbatch_is_ignored() -> None:
    first = wire_range(0, 9)
    events = read([*microbatch(first), *microbatch(first), *microbatch(wire_range(10, 19))])
    assert [s for s in spans(events) if s[1] == 0] == [
        ("data", 0, 9),
        ("data", 0, 9),
        ("end", 0, 9),
    ]
    assert not [e for e in events if isinstance(e, Reorg)]


def test_an_older_completed_range_sent_again_is_a_protocol_error() -> None:
    first = wire_range(0, 9)
    events, error = read_until_error(
        [*microbatch(first), *microbatch(wire_range(10, 19)), message(first, complete=True)]
    )
    assert "already completed" in str(error)
    assert not [e for e in events if isinstance(e, Reorg)], "no reorg may be announced"


# -- transitions between microbatches --------------------------------------------------------


def test_forward_gap() -> None:
    events, error = read_until_error(
        [*microbatch(wire_range(0, 9)), message(wire_range(12, 19), rows=3)]
    )
    assert "forward gap" in str(error) and "10..11" in str(error)
    assert spans(events)[-1] == ("end", 0, 9)


def test_contiguous_range_with_a_broken_hash_chain() -> None:
    _, error = read_until_error(
        [*microbatch(wire_range(0, 9)), message(wire_range(10, 19, parent_fork=7), rows=3)]
    )
    assert "broken hash chain" in str(error)


def test_backward_range_claiming_the_last_hash_as_parent() -> None:
    wire = wire_range(5, 12, fork=1)
    wire["prev_hash"] = block_hash(9)
    _, error = read_until_error([*microbatch(wire_range(0, 9)), message(wire, rows=3)])
    assert "claims the previous range's hash" in str(error)


@pytest.mark.parametrize("where", ["between-microbatches", "inside-a-microbatch", "vs-cursor"])
def test_a_second_network_in_one_stream(where: str) -> None:
    first = wire_range(0, 9)
    other = wire_range(10, 19, network="sepolia")
    if where == "between-microbatches":
        messages, last = [*microbatch(first), message(other, rows=3)], None
    elif where == "inside-a-microbatch":
        messages, last = [message(first, rows=3), message(wire_range(0, 9, network="x"))], None
    else:
        messages, last = [message(other, rows=3)], BlockRange("mainnet", 9, 9, block_hash(9))
    events, error = read_until_error(messages, last)
    assert "one network per stream" in str(error)
    assert not [e for e in events if isinstance(e, Data) and e.block_range.network != "mainnet"]  # type: ignore[union-attr]


def test_range_change_inside_a_microbatch() -> None:
    events, error = read_until_error(
        [message(wire_range(0, 9), rows=3), message(wire_range(0, 8), rows=3, complete=True)]
    )
    assert "range changed inside a microbatch" in str(error)
    assert not [e for e in events if isinstance(e, MicrobatchEnd)]


# -- the form of each message ----------------------------------------------------------------


def _bad(wire_change: dict[str, Any]) -> dict[str, Any]:
    wire = wire_range(0, 9)
    wire.update(wire_change)
    return wire


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        (message(None, rows=3), "without app_metadata"),
        (message([], rows=3), "exactly one range"),
        (message([wire_range(0, 9), wire_range(0, 9, network="b")], rows=3), "exactly one range"),
        (message(_bad({"hash": 12345}), rows=3), "hash is not a string"),
        (message(_bad({"hash": "0x1234"}), rows=3), "64 hex digits"),
        (message(_bad({"hash": "ab" * 33}), rows=3), "64 hex digits"),
        (message(_bad({"hash": None}), rows=3), "hash must be a string"),
        (message(_bad({"prev_hash": 7}), rows=3), "prev_hash is not a string"),
        (message(_bad({"network": ""}), rows=3), "empty network"),
        (message(_bad({"network": 1}), rows=3), "ill-typed"),
        (message(_bad({"numbers": {"start": 9, "end": 0}}), rows=3), "start 9 > end 0"),
        (message(_bad({"numbers": {"start": "0", "end": 9}}), rows=3), "ill-typed"),
        (message(None, raw=b'{"ranges": [], "ranges_complete": "yes"}'), "not a boolean"),
        (message(None, raw=b"not json"), "not JSON"),
        (message(None, raw=b'{"ranges": [5]}'), "not an object"),
    ],
    ids=[
        "no-metadata",
        "no-range",
        "two-ranges",
        "numeric-hash",
        "short-hash",
        "no-0x",
        "null-hash",
        "numeric-prev-hash",
        "empty-network",
        "numeric-network",
        "start-after-end",
        "string-number",
        "complete-not-bool",
        "not-json",
        "range-not-object",
    ],
)
def test_malformed_messages_are_protocol_errors_that_yield_nothing_of_them(
    bad: FlightMessage, words: str
) -> None:
    good = microbatch(wire_range(0, 9))
    events, error = read_until_error([*good, bad])
    assert words in str(error)
    assert spans(events) == [("data", 0, 9), ("data", 0, 9), ("end", 0, 9)]
