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

from amp.config import timeout_seconds
from amp.deadpeer import DEFAULT_DEAD_PEER_TIMEOUT
from amp.errors import ConfigError, ServerError
from amp.flight.protowire import encode_statement_query
from amp.redact import redact_url, redact_value
from amp.sqltext import unqualified_tables

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
def map_flight_errors(url: str, action: str, sql: str | None = None) -> Iterator[None]:
    """Re-raise pyarrow Flight errors as ServerError with the gRPC status (``from`` it).

    ``url`` is shown without userinfo; with ``sql``, a table-not-found error (NOT_FOUND,
    or INTERNAL as the real server says at planning) on a query naming a table without
    its dataset says that tables are ``<dataset>.<table>``."""
    url = redact_url(url)
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
            if "too many pings" in message.lower():  # only a hint: the status decides
                message += (
                    "; the server refuses gRPC keepalive pings this often: pass "
                    "Client(dead_peer_timeout=None), or at least twice its smallest ping "
                    "interval (600 for a gRPC server's default of 5 minutes)"
                )
        elif status in ("NOT_FOUND", "INTERNAL") and sql is not None:
            unqualified = unqualified_tables(sql)
            if unqualified:
                message += (
                    f"; the query names {', '.join(unqualified)} without a dataset: tables "
                    "are named <dataset>.<table>, e.g. eth_firehose.blocks"
                )
        raise ServerError(f"{action} failed with {status}: {message}", status) from exc


def keepalive_options(dead_peer_timeout: float | None) -> list[tuple[str, int]]:
    """gRPC channel options that end a call on a silent server within about
    ``dead_peer_timeout`` seconds (None: no pings).

    Why pings: a streaming query rightly sends nothing while it waits for blocks
    (protocol §2), so silence alone proves nothing; an HTTP/2 PING every half of the
    bound, unanswered for the other half, closes the connection and the call ends with
    UNAVAILABLE, which is retried with ``amp-resume``. Pings go on while a call is open
    even when no data flows (gRPC otherwise stops after two), so a long wait at the
    chain head is watched too; none are sent while no call is open. The server must
    answer them and not count them as abuse: the protocol does not say so, see
    "Dead peers" in docs/architecture.md.
    """
    if dead_peer_timeout is None:
        return []
    half_ms = max(1, round(dead_peer_timeout * 500))
    return [
        ("grpc.keepalive_time_ms", half_ms),
        ("grpc.keepalive_timeout_ms", half_ms),
        # The gRPC in pyarrow times an unanswered ping (keepalive's too) by this one,
        # 60 s by default, whatever keepalive_timeout_ms says.
        ("grpc.http2.ping_timeout_ms", half_ms),
        ("grpc.http2.max_pings_without_data", 0),
    ]


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

    def ready(self) -> bool:
        """Whether a message (or the end) is already waiting to be consumed."""
        return not self._queue.empty()

    def close(self) -> None:
        """Cancel the call and stop the reader thread; safe to call twice."""
        if self._closed.is_set():
            return
        self._closed.set()
        reader = self._reader
        if reader is None:
            # DoGet has not returned: a streaming query sends nothing before its first
            # microbatch, which at the chain head may take long, and a call cannot be
            # cancelled before it returns. The thread cancels it as soon as it does;
            # waiting for that here would hold up a stop() for as long.
            return
        with contextlib.suppress(Exception):
            reader.cancel()
        self._thread.join(timeout=5)


class FlightTransport:
    """A connection to one Amp server (``grpc://`` or ``grpc+tls://``).

    ``dead_peer_timeout`` (seconds, None for no keepalive pings) bounds how long a
    silent, black-holed connection to the server goes unnoticed.
    """

    def __init__(
        self,
        url: str,
        auth_token: str | None = None,
        dead_peer_timeout: float | None = DEFAULT_DEAD_PEER_TIMEOUT,
    ) -> None:
        if not isinstance(url, str) or not url.startswith(
            ("grpc://", "grpc+tls://", "grpc+tcp://")
        ):
            raise ConfigError(
                "server URL must start with grpc:// or grpc+tls://, got "
                f"{redact_value('url', url)} "
                "(for example 'grpc://localhost:1602')"
            )
        self.url = url
        token = auth_token if auth_token is not None else os.environ.get("AMP_AUTH_TOKEN")
        self._token = token or None
        if dead_peer_timeout is not None:
            dead_peer_timeout = timeout_seconds("Client()", "dead_peer_timeout", dead_peer_timeout)
        self.dead_peer_timeout = dead_peer_timeout
        self._client = flight.connect(url, generic_options=keepalive_options(dead_peer_timeout))

    def __repr__(self) -> str:  # never shows the token
        return f"FlightTransport({redact_url(self.url)!r}, auth={'yes' if self._token else 'no'})"

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
        info = self._flight_info(sql, headers, timeout)
        if len(info.endpoints) != 1:
            raise ServerError(
                f"expected exactly one endpoint in FlightInfo, got {len(info.endpoints)}",
                "INTERNAL",
            )
        ticket = info.endpoints[0].ticket
        options = flight.FlightCallOptions(headers=headers)
        return MessageStream(lambda: self._client.do_get(ticket, options), self.url, info.schema)

    def schema(self, sql: str, *, timeout: float | None = 60.0) -> pa.Schema:
        """The output schema of ``sql`` from ``GetFlightInfo`` alone (no ``DoGet``).

        Why this is cheap on any server: an Amp server plans the query at
        ``GetFlightInfo`` over a catalog of the tables it names and reads no data; the
        query runs only when its ticket is redeemed, which this never does.
        """
        return self._flight_info(sql, self._headers(None, None), timeout).schema

    def _flight_info(
        self, sql: str, headers: list[tuple[bytes, bytes]], timeout: float | None
    ) -> flight.FlightInfo:
        descriptor = flight.FlightDescriptor.for_command(encode_statement_query(sql))
        with map_flight_errors(self.url, "GetFlightInfo", sql):
            return self._client.get_flight_info(
                descriptor, flight.FlightCallOptions(headers=headers, timeout=timeout)
            )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.close()
