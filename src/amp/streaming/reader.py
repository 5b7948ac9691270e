"""FlightData messages → typed stream events, with the chain rules of protocol §2-§3.

The reader never drops a message: every row-carrying message becomes a ``Data`` event,
every ``ranges_complete`` marker a ``MicrobatchEnd``, and a reorg is announced as
``Reorg`` before the first event of the microbatch that reveals it. It knows nothing of
destinations.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import pyarrow as pa

from amp.errors import ProtocolError, ServerError
from amp.flight.transport import FlightMessage
from amp.streaming.types import BatchMetadata, BlockRange, MetadataError


@dataclass(frozen=True, slots=True)
class Data:
    """Rows of the open microbatch (``block_range``), or of a batch query (None)."""

    batch: pa.RecordBatch
    block_range: BlockRange | None
    ranges: tuple[BlockRange, ...] = ()


@dataclass(frozen=True, slots=True)
class MicrobatchEnd:
    """The server's ``ranges_complete: true``: the only safe point to commit."""

    block_range: BlockRange


@dataclass(frozen=True, slots=True)
class Reorg:
    """Blocks ``invalidated.start..invalidated.end`` of a network are no longer canonical;
    every row delivered for them must be removed before the new data is applied."""

    invalidated: BlockRange
    previous: BlockRange
    incoming: BlockRange


StreamEvent = Data | MicrobatchEnd | Reorg


def _parse(message: FlightMessage) -> BatchMetadata | None:
    if message.app_metadata is None or len(message.app_metadata) == 0:
        return None
    try:
        return BatchMetadata.from_json_bytes(message.app_metadata)
    except MetadataError as exc:
        raise ProtocolError(f"invalid app_metadata from the server: {exc}") from exc


def _same_range(a: BlockRange, b: BlockRange) -> bool:
    return (a.network, a.start, a.end, a.hash) == (b.network, b.start, b.end, b.hash)


def check_transition(last: BlockRange | None, incoming: BlockRange) -> Reorg | None:
    """Validate the start of a microbatch against the last completed one (§3).

    Returns the reorg it reveals, None for a contiguous range; raises ProtocolError for
    a forward gap or a broken hash chain.
    """
    if last is None or last.network != incoming.network:
        return None
    if incoming.start == last.end + 1:
        if None not in (incoming.prev_hash, last.hash) and incoming.prev_hash != last.hash:
            raise ProtocolError(
                f"broken hash chain on {incoming.network}: range "
                f"{incoming.start}..{incoming.end} has prev_hash {incoming.prev_hash}, "
                f"but block {last.end} (end of the previous range) has hash {last.hash}"
            )
        return None
    if incoming.start > last.end + 1:
        raise ProtocolError(
            f"forward gap on {incoming.network}: range {incoming.start}..{incoming.end} "
            f"follows {last.start}..{last.end}; blocks {last.end + 1}..{incoming.start - 1} "
            "were never sent"
        )
    # A backward start: a reorg, or the very same range again (replayed).
    if (
        not _same_range(incoming, last)
        and incoming.prev_hash is not None
        and incoming.prev_hash == last.hash
    ):
        raise ProtocolError(
            f"range {incoming.start}..{incoming.end} on {incoming.network} starts at or before "
            f"the previous end {last.end} but claims the previous range's hash as its parent"
        )
    invalidated = BlockRange(
        network=incoming.network, start=incoming.start, end=max(incoming.end, last.end)
    )
    return Reorg(invalidated=invalidated, previous=last, incoming=incoming)


class MicrobatchReader:
    """Turns the messages of a streaming query into ``StreamEvent``s.

    ``last`` is the last range the destination fully processed (the resume cursor), so
    that a reorg that happened while the client was away is detected on the first range.
    """

    def __init__(self, last: BlockRange | None = None) -> None:
        self.last = last
        self._open: BlockRange | None = None

    @property
    def in_microbatch(self) -> bool:
        return self._open is not None

    def events(self, messages: Iterable[FlightMessage]) -> Iterator[StreamEvent]:
        for message in messages:
            yield from self._on_message(message)

    def _on_message(self, message: FlightMessage) -> Iterator[StreamEvent]:
        metadata = _parse(message)
        if metadata is None:
            raise ProtocolError("a streaming message arrived without app_metadata")
        if len(metadata.ranges) != 1:
            raise ProtocolError(
                f"a streaming message must carry exactly one range, got {len(metadata.ranges)}"
            )
        block_range = metadata.ranges[0]
        if self._open is None:
            reorg = check_transition(self.last, block_range)
            if reorg is not None:
                yield reorg
            self._open = block_range
        elif not _same_range(self._open, block_range):
            raise ProtocolError(
                f"range changed inside a microbatch: {self._open.start}..{self._open.end} "
                f"became {block_range.start}..{block_range.end} before ranges_complete"
            )
        if message.batch.num_rows:
            yield Data(message.batch, block_range, metadata.ranges)
        if metadata.ranges_complete:
            self._open = None
            self.last = block_range
            yield MicrobatchEnd(block_range)


def batch_events(messages: Iterable[FlightMessage]) -> Iterator[Data]:
    """The rows of a batch (non-streaming) query; metadata is optional (older servers).

    A server that sends metadata ends a batch result with a ``ranges_complete: true``
    marker; a stream that ends without it was cut short, and raises a ServerError
    (UNAVAILABLE: worth running again) after the rows it did deliver.
    """
    saw_metadata = complete = False
    for message in messages:
        metadata = _parse(message)
        if metadata is not None:
            saw_metadata = True
            complete = complete or metadata.ranges_complete
        if message.batch.num_rows == 0:
            continue
        yield Data(message.batch, None, metadata.ranges if metadata is not None else ())
    if saw_metadata and not complete:
        raise ServerError(
            "the batch query's stream ended before its ranges_complete marker: the result "
            "is incomplete",
            "UNAVAILABLE",
        )
