"""FlightData messages → typed stream events, with the chain rules of protocol §2-§3.

The reader never drops a message: every row-carrying message becomes a ``Data`` event,
every ``ranges_complete`` marker a ``MicrobatchEnd``, and a reorg is announced as
``Reorg`` before the first event of the microbatch that reveals it. It knows nothing of
destinations.
"""

from __future__ import annotations

from collections import deque
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
    incoming: BlockRange


StreamEvent = Data | MicrobatchEnd | Reorg

# Completed ranges remembered to recognise an old range sent again (see MicrobatchReader).
_REMEMBERED_RANGES = 10_000


def _parse(message: FlightMessage) -> BatchMetadata | None:
    if message.app_metadata is None or len(message.app_metadata) == 0:
        return None
    try:
        return BatchMetadata.from_json_bytes(message.app_metadata)
    except MetadataError as exc:
        raise ProtocolError(f"invalid app_metadata from the server: {exc}") from exc


def _same_range(a: BlockRange, b: BlockRange) -> bool:
    return (a.network, a.start, a.end, a.hash) == (b.network, b.start, b.end, b.hash)


def _span(block_range: BlockRange) -> str:
    return f"{block_range.start}..{block_range.end}"


def check_transition(last: BlockRange | None, incoming: BlockRange) -> Reorg | None:
    """Validate the first range of a microbatch against the last completed one (§3).

    Returns the reorg it reveals, None for a contiguous range. Raises ProtocolError for
    another network than ``last``'s, a forward gap, a contiguous range whose
    ``prev_hash`` is not ``last.hash``, and a backward range that claims ``last.hash`` as
    its parent. An ``incoming`` identical to ``last`` is no transition at all: the
    reader ignores it before asking (see ``MicrobatchReader``).
    """
    if last is None:
        return None
    if incoming.network != last.network:
        raise ProtocolError(
            f"range {_span(incoming)} is on network {incoming.network!r}, but this stream "
            f"is on {last.network!r}; amp loads one network per stream"
        )
    if incoming.start == last.end + 1:
        if None not in (incoming.prev_hash, last.hash) and incoming.prev_hash != last.hash:
            raise ProtocolError(
                f"broken hash chain on {incoming.network}: range {_span(incoming)} has "
                f"prev_hash {incoming.prev_hash}, but block {last.end} (end of the previous "
                f"range) has hash {last.hash}"
            )
        return None
    if incoming.start > last.end + 1:
        raise ProtocolError(
            f"forward gap on {incoming.network}: range {_span(incoming)} follows "
            f"{_span(last)}; blocks {last.end + 1}..{incoming.start - 1} were never sent"
        )
    if incoming.prev_hash is not None and incoming.prev_hash == last.hash:
        raise ProtocolError(
            f"range {_span(incoming)} on {incoming.network} starts at or before the "
            f"previous end {last.end} but claims the previous range's hash as its parent"
        )
    invalidated = BlockRange(
        network=incoming.network, start=incoming.start, end=max(incoming.end, last.end)
    )
    return Reorg(invalidated=invalidated, incoming=incoming)


class MicrobatchReader:
    """Turns the messages of a streaming query into ``StreamEvent``s, enforcing §2-§3.

    ``last`` is the last range the destination fully processed (the resume cursor), so
    that a reorg that happened while the client was away is detected on the first range.

    Every rule violation is a ProtocolError raised before the offending message yields
    anything, so the pipeline never commits the microbatch it belongs to: a message
    without app_metadata or without exactly one range, ill-formed metadata (see
    ``BatchMetadata``), a range that changes before its ``ranges_complete`` marker, a
    second network in one stream, and the transitions of ``check_transition``.

    A range identical to the last completed one (same network, blocks and end hash),
    outside a microbatch, is ignored with every message that repeats it: a server that
    re-sends the last marker (or replays the whole last microbatch). Why ignored, not an
    error: §3 makes only a range that *differs* a reorg, and an identical range carries
    nothing new (the same blocks under the same end hash are the same rows), all of
    which the destination already committed; stopping the load over it would turn a
    harmless repeat into an outage. Treating it as a reorg, as amp once did, deleted the
    committed rows and recorded the range as processed again: a silent loss.

    An *older* completed range sent again (say, a stale marker after later
    microbatches) would look like a reorg by the §3 rule, but it cannot be one: a reorg
    restarts at the first divergent block, so its range cannot end on a block and hash
    already received on this stream. It is a ProtocolError.
    """

    def __init__(self, last: BlockRange | None = None) -> None:
        self.last = last
        self._open: BlockRange | None = None
        self._network = last.network if last is not None else None
        # (end block, end hash) of completed ranges still canonical as far as we know.
        self._completed: deque[tuple[int, str | None]] = deque(maxlen=_REMEMBERED_RANGES)

    def events(self, messages: Iterable[FlightMessage]) -> Iterator[StreamEvent]:
        for message in messages:
            yield from self._on_message(message)

    def _range_of(self, message: FlightMessage) -> tuple[BlockRange, bool]:
        metadata = _parse(message)
        if metadata is None:
            raise ProtocolError("a streaming message arrived without app_metadata")
        if len(metadata.ranges) != 1:
            raise ProtocolError(
                f"a streaming message must carry exactly one range, got {len(metadata.ranges)}"
            )
        block_range = metadata.ranges[0]
        if self._network is None:
            self._network = block_range.network
        elif block_range.network != self._network:
            raise ProtocolError(
                f"range {_span(block_range)} is on network {block_range.network!r}, but this "
                f"stream is on {self._network!r}; amp loads one network per stream"
            )
        return block_range, metadata.ranges_complete

    def _on_message(self, message: FlightMessage) -> Iterator[StreamEvent]:
        block_range, complete = self._range_of(message)
        if self._open is None:
            if self.last is not None and _same_range(block_range, self.last):
                return  # the last completed range again: ignored (see the class docstring)
            reorg = check_transition(self.last, block_range)
            if reorg is not None:
                self._check_not_stale(block_range)
                self._forget_from(reorg.invalidated.start)
                yield reorg
            self._open = block_range
        elif not _same_range(self._open, block_range):
            raise ProtocolError(
                f"range changed inside a microbatch: {_span(self._open)} became "
                f"{_span(block_range)} before ranges_complete"
            )
        if message.batch.num_rows:
            yield Data(message.batch, block_range, (block_range,))
        if complete:
            self._open = None
            self.last = block_range
            self._completed.append((block_range.end, block_range.hash))
            yield MicrobatchEnd(block_range)

    def _check_not_stale(self, incoming: BlockRange) -> None:
        if (incoming.end, incoming.hash) in self._completed:
            raise ProtocolError(
                f"range {_span(incoming)} on {incoming.network} was already completed on "
                f"this stream, and its end block {incoming.end} still has hash "
                f"{incoming.hash}: an old range sent again, not a reorg"
            )

    def _forget_from(self, start: int) -> None:
        """Completed ranges reaching ``start`` or later are reorged away: forget them, so
        that the chain returning to one of them is a reorg again."""
        kept = [entry for entry in self._completed if entry[0] < start]
        self._completed.clear()
        self._completed.extend(kept)


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
