"""The narrow seam between the load loop and the Amp server.

Why a Protocol: everything above it (reader, loop, client) only needs "run this query,
give me its messages", so tests can drive the loop with an in-memory transport that
scripts any message sequence, and ``FlightTransport`` is one implementation of it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any, Protocol

import pyarrow as pa

from amp.flight.transport import FlightMessage

__all__ = ["FlightMessage", "MessageSource", "Transport"]


class MessageSource(Protocol):
    """The messages of one query, in order."""

    @property
    def schema(self) -> pa.Schema: ...

    def messages(self, stop: threading.Event | None = None) -> Iterator[FlightMessage]:
        """The messages; ends early, between messages, once ``stop`` is set."""
        ...

    def ready(self) -> bool:
        """Whether the next message (or the end) has already arrived."""
        ...

    def close(self) -> None: ...


class Transport(Protocol):
    """Runs queries on an Amp server (``amp-stream``/``amp-resume`` as protocol §1-§4)."""

    def execute(
        self,
        sql: str,
        *,
        streaming: bool | None = None,
        resume: dict[str, Any] | None = None,
    ) -> MessageSource: ...

    def close(self) -> None: ...
