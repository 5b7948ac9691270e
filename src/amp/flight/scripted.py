"""An in-memory ``Transport`` that plays scripted message sequences.

Why it ships: the load loop only sees the ``Transport`` seam, so any sequence a server
could send (a repeated marker, a drop mid-microbatch, a reorg at any point, a pause at
the head) can be replayed exactly, without a network, in amp's tests and in users' own.

    transport = ScriptedTransport(schema, [
        [data(batch, rng), end(rng), PAUSE, ServerError("cut", "UNAVAILABLE")],
        [end(next_rng)],
    ])

Each ``execute`` plays the next script and records its ``(sql, streaming, resume)`` in
``calls``; once the scripts are spent a query fails with UNAVAILABLE.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from amp.errors import ServerError
from amp.flight.transport import FlightMessage
from amp.streaming.types import BatchMetadata, BlockRange

__all__ = ["PAUSE", "ScriptedSource", "ScriptedTransport", "data", "end"]


@dataclass(frozen=True)
class _Pause:
    """The server has nothing more for now (it waits for blocks): ``ready()`` is False."""


PAUSE = _Pause()
ScriptItem = FlightMessage | _Pause | BaseException


def data(batch: pa.RecordBatch, block_range: BlockRange) -> FlightMessage:
    """A data message of the microbatch ``block_range``."""
    return FlightMessage(batch, BatchMetadata((block_range,), False).to_json_bytes())


def end(block_range: BlockRange) -> FlightMessage:
    """The zero-row ``ranges_complete: true`` marker of ``block_range``."""
    empty = pa.RecordBatch.from_arrays([], schema=pa.schema([]))
    return FlightMessage(empty, BatchMetadata((block_range,), True).to_json_bytes())


class ScriptedSource:
    """The messages of one scripted stream; an exception item is raised in place."""

    def __init__(self, schema: pa.Schema, items: Sequence[ScriptItem]) -> None:
        self.schema = schema
        self._items = list(items)
        self._position = 0
        self.closed = False

    def messages(self, stop: threading.Event | None = None) -> Iterator[FlightMessage]:
        while self._position < len(self._items):
            if stop is not None and stop.is_set():
                return
            item = self._items[self._position]
            self._position += 1
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, FlightMessage):
                yield item

    def ready(self) -> bool:
        return self._position < len(self._items) and not isinstance(
            self._items[self._position], _Pause
        )

    def close(self) -> None:
        self.closed = True


class ScriptedTransport:
    """Plays one script per ``execute``, in order."""

    def __init__(self, schema: pa.Schema, scripts: Sequence[Sequence[ScriptItem]]) -> None:
        self.schema = schema
        self._scripts = [list(script) for script in scripts]
        self.calls: list[tuple[str, bool | None, dict[str, Any] | None]] = []

    def execute(
        self,
        sql: str,
        *,
        streaming: bool | None = None,
        resume: dict[str, Any] | None = None,
    ) -> ScriptedSource:
        self.calls.append((sql, streaming, resume))
        if not self._scripts:
            raise ServerError("the scripted transport has no more streams", "UNAVAILABLE")
        return ScriptedSource(self.schema, self._scripts.pop(0))

    def close(self) -> None:
        self._scripts.clear()
