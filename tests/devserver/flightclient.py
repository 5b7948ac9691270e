"""A minimal protocol client for the dev server conformance tests, on bare pyarrow.flight.

Why its own: the conformance suite must not trust amp's client (which is tested against
this server). Everything here is plain Flight: a CMD descriptor holding a Flight SQL
``CommandStatementQuery``, GetFlightInfo, DoGet, and the JSON ``app_metadata`` of each
FlightData message parsed strictly in the wire form of protocol §2.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.flight as flight

from amp.flight.protowire import encode_statement_query

# Deadline of every call, so that a server that hangs fails a test instead of hanging it.
CALL_TIMEOUT = 30.0

# Rows of each table are unique by these columns; results are compared sorted by them.
SORT_KEYS: dict[str, list[str]] = {
    "blocks": ["block_num"],
    "transactions": ["block_num", "tx_index"],
    "logs": ["block_num", "log_index"],
}

STREAM = " SETTINGS stream = true"


def call_options(
    headers: Mapping[str, str] | None = None, timeout: float | None = CALL_TIMEOUT
) -> flight.FlightCallOptions:
    pairs = [(key.encode(), value.encode()) for key, value in (headers or {}).items()]
    return flight.FlightCallOptions(timeout=timeout, headers=pairs)


def connect(url: str) -> flight.FlightClient:
    return flight.connect(url)


def descriptor(sql: str) -> flight.FlightDescriptor:
    return flight.FlightDescriptor.for_command(encode_statement_query(sql))


def flight_info(
    client: flight.FlightClient,
    sql: str,
    headers: Mapping[str, str] | None = None,
    timeout: float | None = CALL_TIMEOUT,
) -> flight.FlightInfo:
    return client.get_flight_info(descriptor(sql), call_options(headers, timeout))


def ticket_of(info: flight.FlightInfo) -> flight.Ticket:
    assert len(info.endpoints) == 1, info.endpoints
    return info.endpoints[0].ticket


def resume_header(number: int, block_hash: bytes | str, network: str = "mainnet") -> str:
    hex_hash = block_hash if isinstance(block_hash, str) else "0x" + block_hash.hex()
    return json.dumps({network: {"number": number, "hash": hex_hash}})


def hex_hash(raw: bytes) -> str:
    return "0x" + raw.hex()


# -- app_metadata ------------------------------------------------------------------------


@dataclass(frozen=True)
class WireRange:
    """One entry of ``ranges``, read strictly in the wire form (``numbers.start/end``)."""

    network: str
    start: int
    end: int
    hash: str | None
    prev_hash: str | None
    timestamp: int | None

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> WireRange:
        numbers = data["numbers"]
        return cls(
            network=data["network"],
            start=numbers["start"],
            end=numbers["end"],
            hash=data.get("hash"),
            prev_hash=data.get("prev_hash"),
            timestamp=data.get("timestamp"),
        )


@dataclass(frozen=True)
class Message:
    """One FlightData record batch as read by the client, with its app_metadata."""

    batch: pa.RecordBatch
    raw_metadata: bytes | None

    @property
    def num_rows(self) -> int:
        return self.batch.num_rows

    @property
    def metadata(self) -> dict[str, Any]:
        assert self.raw_metadata is not None, "a message without app_metadata"
        data = json.loads(self.raw_metadata.decode("utf-8"))
        assert isinstance(data, dict), data
        return data

    @property
    def ranges(self) -> list[WireRange]:
        return [WireRange.from_wire(entry) for entry in self.metadata["ranges"]]

    @property
    def complete(self) -> bool:
        value = self.metadata["ranges_complete"]
        assert isinstance(value, bool), value
        return value

    @property
    def range(self) -> WireRange:
        """The single range of a streaming message (protocol §2: exactly one)."""
        ranges = self.ranges
        assert len(ranges) == 1, f"expected exactly one range per message, got {ranges}"
        return ranges[0]


def read_message(reader: flight.FlightStreamReader) -> Message | None:
    """The next message, or None at the end of the stream."""
    try:
        chunk = reader.read_chunk()
    except StopIteration:
        return None
    raw = chunk.app_metadata.to_pybytes() if chunk.app_metadata is not None else None
    return Message(chunk.data, raw)


def read_all_messages(reader: flight.FlightStreamReader) -> list[Message]:
    messages = []
    while (message := read_message(reader)) is not None:
        messages.append(message)
    return messages


@contextmanager
def open_stream(
    client: flight.FlightClient,
    sql: str,
    headers: Mapping[str, str] | None = None,
    timeout: float | None = CALL_TIMEOUT,
) -> Iterator[flight.FlightStreamReader]:
    """GetFlightInfo then DoGet; the reader is cancelled on exit."""
    info = flight_info(client, sql, headers, timeout)
    reader = client.do_get(ticket_of(info), call_options(headers, timeout))
    try:
        yield reader
    finally:
        reader.cancel()


def run_batch(
    client: flight.FlightClient, sql: str, headers: Mapping[str, str] | None = None
) -> tuple[pa.Schema, list[Message]]:
    """A batch query to its end: the stream's schema and every message."""
    with open_stream(client, sql, headers) as reader:
        return reader.schema, read_all_messages(reader)


def messages_table(schema: pa.Schema, messages: list[Message]) -> pa.Table:
    return pa.Table.from_batches([message.batch for message in messages], schema=schema)


def sorted_table(table: pa.Table, name: str) -> pa.Table:
    return table.sort_by([(key, "ascending") for key in SORT_KEYS[name]])


def assert_same_rows(actual: pa.Table, expected: pa.Table, name: str) -> None:
    """Same schema and the same rows (all columns), order aside."""
    assert actual.schema.equals(expected.schema), f"{actual.schema}\n!=\n{expected.schema}"
    assert actual.num_rows == expected.num_rows
    left, right = sorted_table(actual, name), sorted_table(expected, name)
    if not left.equals(right):
        for column in left.column_names:
            assert left[column].equals(right[column]), f"column {column} differs"
        raise AssertionError("tables differ")


def rows_of_blocks(table: pa.Table, start: int, end: int) -> pa.Table:
    block_num = table["block_num"]
    return table.filter(pc.and_(pc.greater_equal(block_num, start), pc.less_equal(block_num, end)))


# -- streaming -----------------------------------------------------------------------------


@dataclass
class Microbatch:
    """Every message of one microbatch: data (and keep-alives), then the completion marker."""

    range: WireRange
    messages: list[Message]
    marker: Message

    def table(self) -> pa.Table:
        return messages_table(self.marker.batch.schema, self.messages)


def read_microbatch(read: Callable[[], Message | None]) -> Microbatch:
    """Read one microbatch, asserting its shape (protocol §2): every message carries the
    same single range with ``ranges_complete: false``, then one zero-row message with the
    same range and ``ranges_complete: true``."""
    messages: list[Message] = []
    while True:
        message = read()
        assert message is not None, "the stream ended inside a microbatch"
        block_range = message.range
        if messages:
            assert block_range == messages[0].range, (block_range, messages[0].range)
        if message.complete:
            assert message.num_rows == 0, "the completion marker must have zero rows"
            if messages:
                assert message.metadata["ranges"] == messages[0].metadata["ranges"]
            return Microbatch(block_range, messages, message)
        messages.append(message)


def read_microbatches(reader: flight.FlightStreamReader, count: int) -> list[Microbatch]:
    return [read_microbatch(lambda: read_message(reader)) for _ in range(count)]


def read_until_end(reader: flight.FlightStreamReader, end: int) -> list[Microbatch]:
    """Microbatches until one ends at block ``end`` (the stream must get there)."""
    batches: list[Microbatch] = []
    while not batches or batches[-1].range.end != end:
        assert len(batches) < 10_000, "runaway stream"
        batches.append(read_microbatch(lambda: read_message(reader)))
    return batches


class BackgroundStream:
    """DoGet and reads on a thread, so that a test can wait for the next message with a
    timeout and so prove that nothing is sent (a blocking read cannot show that)."""

    def __init__(
        self,
        client: flight.FlightClient,
        ticket: flight.Ticket,
        timeout: float = CALL_TIMEOUT,
    ) -> None:
        self._items: queue.Queue[Message | BaseException | None] = queue.Queue()
        self._lock = threading.Lock()
        self._reader: flight.FlightStreamReader | None = None
        self._closed = False
        self._thread = threading.Thread(
            target=self._run, args=(client, ticket, timeout), daemon=True
        )
        self._thread.start()

    def _run(self, client: flight.FlightClient, ticket: flight.Ticket, timeout: float) -> None:
        try:
            reader = client.do_get(ticket, call_options(timeout=timeout))
            with self._lock:
                self._reader = reader
                if self._closed:
                    reader.cancel()
                    return
            while True:
                message = read_message(reader)
                self._items.put(message)
                if message is None:
                    return
        except BaseException as exc:
            self._items.put(exc)

    def next(self, timeout: float = 10.0) -> Message | None:
        """The next message (None at the end of the stream); AssertionError when nothing
        arrives within ``timeout``; a stream error is raised."""
        try:
            item = self._items.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no message within {timeout} s") from None
        if isinstance(item, BaseException):
            raise item
        return item

    def assert_silent(self, seconds: float) -> None:
        """Nothing arrives (not a message, not the end, not an error) within ``seconds``."""
        try:
            item = self._items.get(timeout=seconds)
        except queue.Empty:
            return
        raise AssertionError(f"expected nothing to be sent, got {item!r}")

    def microbatch(self, timeout: float = 10.0) -> Microbatch:
        return read_microbatch(lambda: self.next(timeout))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            reader = self._reader
        if reader is not None:
            reader.cancel()
            self._thread.join(timeout=5)


# -- a strict destination --------------------------------------------------------------------


@dataclass
class Destination:
    """Applies microbatches like a strict client (protocol §2-§3): validates each range
    against the last one, removes the rows a reorg invalidates, keeps the rest."""

    network: str = "mainnet"
    last: WireRange | None = None
    parts: list[pa.Table] = field(default_factory=list)
    reorgs: list[tuple[WireRange, WireRange]] = field(default_factory=list)

    def apply(self, batch: Microbatch) -> None:
        incoming, last = batch.range, self.last
        assert incoming.network == self.network
        if last is not None:
            if incoming.start <= last.end:
                # A reorg (§3): backwards, and not chained on what was sent before.
                assert incoming.prev_hash != last.hash, (last, incoming)
                self.reorgs.append((last, incoming))
                low, high = incoming.start, max(incoming.end, last.end)
                self.parts = [_drop_blocks(part, low, high) for part in self.parts]
            else:
                assert incoming.start == last.end + 1, f"forward gap after {last}: {incoming}"
                assert incoming.prev_hash == last.hash, (last, incoming)
        self.parts.append(batch.table())
        self.last = incoming

    def table(self, schema: pa.Schema) -> pa.Table:
        return pa.concat_tables(self.parts) if self.parts else schema.empty_table()


def _drop_blocks(table: pa.Table, low: int, high: int) -> pa.Table:
    block_num = table["block_num"]
    return table.filter(pc.or_(pc.less(block_num, low), pc.greater(block_num, high)))
