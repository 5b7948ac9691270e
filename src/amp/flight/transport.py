"""The Flight SQL transport: issue a query, read its FlightData messages (protocol §1).

Why a reader thread: the network read and the destination write of the next message
overlap, and the consumer waits on a queue with a short timeout, so Ctrl-C is handled
promptly even while the server sends nothing (waiting for new blocks). The queue is
bounded, so memory stays bounded by a few messages however slow the destination.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight

from amp.errors import ConfigError, ServerError
from amp.flight.protowire import encode_statement_query

_QUEUE_DEPTH = 8
_POLL_SECONDS = 0.2

# pyarrow keeps no gRPC code for some statuses; Arrow's gRPC transport words its message
# by code, so these prefixes identify the code (they are not free text).
_ARROW_INVALID_PREFIXES = {
    "grpc returned resource exhausted error": "RESOURCE_EXHAUSTED",
    "grpc returned failed precondition error": "FAILED_PRECONDITION",
    "grpc returned out of range error": "OUT_OF_RANGE",
}

_STATUS_BY_TYPE: tuple[tuple[type[BaseException], str], ...] = (
    (flight.FlightUnavailableError, "UNAVAILABLE"),
    (flight.FlightTimedOutError, "DEADLINE_EXCEEDED"),
    (flight.FlightInternalError, "INTERNAL"),
    (flight.FlightUnauthenticatedError, "UNAUTHENTICATED"),
    (flight.FlightUnauthorizedError, "PERMISSION_DENIED"),
    (flight.FlightCancelledError, "CANCELLED"),
    (flight.FlightServerError, "UNKNOWN"),
    (pa.ArrowKeyError, "NOT_FOUND"),
    (pa.ArrowNotImplementedError, "UNIMPLEMENTED"),
    (pa.ArrowInvalid, "INVALID_ARGUMENT"),
)


def grpc_status_of(exc: BaseException) -> str | None:
    """The gRPC status code name behind a pyarrow Flight exception, or None."""
    for kind, status in _STATUS_BY_TYPE:
        if isinstance(exc, kind):
            if status == "INVALID_ARGUMENT":
                lowered = str(exc).lower()
                for prefix, code in _ARROW_INVALID_PREFIXES.items():
                    if lowered.startswith(prefix):
                        return code
            return status
    return None


def _server_message(exc: BaseException) -> str:
    """The server's own words: pyarrow appends client debug context we do not need."""
    text = str(exc)
    for marker in (". gRPC client debug context:", ". Detail:"):
        text = text.split(marker, 1)[0]
    for prefix in ("Flight returned ", "gRPC returned "):
        if text.startswith(prefix) and ", with message: " in text:
            text = text.split(", with message: ", 1)[1]
    return text


@contextlib.contextmanager
def map_flight_errors(url: str, action: str) -> Iterator[None]:
    """Re-raise pyarrow Flight errors as ServerError with the gRPC status (``from`` it)."""
    try:
        yield
    except ServerError:
        raise
    except (flight.FlightError, pa.ArrowException) as exc:
        status = grpc_status_of(exc) or "UNKNOWN"
        message = _server_message(exc)
        if status == "UNAVAILABLE" and action == "GetFlightInfo":
            message = f"cannot reach the Amp server at {url} ({message}); check the URL and "
            message += "that the server is running"
        elif status == "UNAVAILABLE":
            message = f"the connection to {url} dropped ({message})"
        raise ServerError(f"{action} failed with {status}: {message}", status) from exc


@dataclass(frozen=True, slots=True)
class FlightMessage:
    """One FlightData message: its record batch and raw app_metadata (None if absent)."""

    batch: pa.RecordBatch
    app_metadata: bytes | None


class MessageStream:
    """The messages of one DoGet, read ahead by a thread into a bounded queue.

    DoGet itself runs on that thread: a streaming DoGet blocks until the server's first
    microbatch, which may be a long wait at the chain head.
    """

    def __init__(
        self,
        open_reader: Callable[[], flight.FlightStreamReader],
        url: str,
        schema: pa.Schema,
    ) -> None:
        self.schema = schema
        self._open_reader = open_reader
        self._reader: flight.FlightStreamReader | None = None
        self._url = url
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=_QUEUE_DEPTH)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._pump, name="amp-flight-reader", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def _pump(self) -> None:
        try:
            with map_flight_errors(self._url, "DoGet"):
                self._reader = self._open_reader()
            if self._closed.is_set():
                self._reader.cancel()
                return
            with map_flight_errors(self._url, "reading the query stream"):
                while not self._closed.is_set():
                    try:
                        chunk = self._reader.read_chunk()
                    except StopIteration:
                        break
                    metadata = chunk.app_metadata
                    message = FlightMessage(
                        chunk.data, metadata.to_pybytes() if metadata is not None else None
                    )
                    if not self._put(message):
                        return
            self._put(StopIteration())
        except BaseException as exc:  # handed to the consumer, raised there
            if not self._closed.is_set():
                self._put(exc)

    def __iter__(self) -> Iterator[FlightMessage]:
        return self.messages()

    def messages(self, stop: threading.Event | None = None) -> Iterator[FlightMessage]:
        """The messages in order; ends early, between messages, once ``stop`` is set."""
        while True:
            try:
                item = self._queue.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                if self._closed.is_set() or (stop is not None and stop.is_set()):
                    return
                continue
            if isinstance(item, StopIteration):
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        """Cancel the call and stop the reader thread; safe to call twice."""
        if self._closed.is_set():
            return
        self._closed.set()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                self._reader.cancel()
        self._thread.join(timeout=5)


class FlightTransport:
    """A connection to one Amp server (``grpc://`` or ``grpc+tls://``)."""

    def __init__(self, url: str, auth_token: str | None = None) -> None:
        if not isinstance(url, str) or not url.startswith(
            ("grpc://", "grpc+tls://", "grpc+tcp://")
        ):
            raise ConfigError(
                f"server URL must start with grpc:// or grpc+tls://, got {url!r} "
                "(for example 'grpc://localhost:1602')"
            )
        self.url = url
        token = auth_token if auth_token is not None else os.environ.get("AMP_AUTH_TOKEN")
        self._token = token or None
        self._client = flight.connect(url)

    def __repr__(self) -> str:  # never shows the token
        return f"FlightTransport({self.url!r}, auth={'yes' if self._token else 'no'})"

    def _headers(
        self, streaming: bool | None, resume: dict[str, Any] | None
    ) -> list[tuple[bytes, bytes]]:
        headers: list[tuple[bytes, bytes]] = []
        if self._token:
            headers.append((b"authorization", f"Bearer {self._token}".encode()))
        if streaming is not None:
            headers.append((b"amp-stream", b"true" if streaming else b"false"))
        if resume:
            headers.append((b"amp-resume", json.dumps(resume, separators=(",", ":")).encode()))
        return headers

    def execute(
        self,
        sql: str,
        *,
        streaming: bool | None = None,
        resume: dict[str, Any] | None = None,
        timeout: float | None = 60.0,
    ) -> MessageStream:
        """GetFlightInfo then DoGet; ``resume`` becomes the ``amp-resume`` header (§4).

        ``timeout`` bounds GetFlightInfo only: a stream may rightly wait for blocks forever.
        """
        headers = self._headers(streaming, resume)
        descriptor = flight.FlightDescriptor.for_command(encode_statement_query(sql))
        with map_flight_errors(self.url, "GetFlightInfo"):
            info = self._client.get_flight_info(
                descriptor, flight.FlightCallOptions(headers=headers, timeout=timeout)
            )
        if len(info.endpoints) != 1:
            raise ServerError(
                f"expected exactly one endpoint in FlightInfo, got {len(info.endpoints)}",
                "INTERNAL",
            )
        ticket = info.endpoints[0].ticket
        options = flight.FlightCallOptions(headers=headers)
        return MessageStream(lambda: self._client.do_get(ticket, options), self.url, info.schema)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.close()
