"""The Flight service of the dev server: GetFlightInfo and DoGet as protocol §1-§5.

Why raw gRPC instead of ``pyarrow.flight.FlightServerBase``: a pyarrow server cannot
send every status a real Amp server (or its gateway) sends, RESOURCE_EXHAUSTED among
them, and it sends the schema before the handler runs, where a real server sends
nothing until the first microbatch. Here every FlightData message is ours to time.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import pyarrow as pa

from amp.devserver.chain import RangeSnapshot, SimulatedChain
from amp.devserver.faults import ColumnChange, Faults, StreamFaults
from amp.devserver.sql import PlannedQuery, QueryEngine, QueryError
from amp.flight import protowire
from amp.streaming.types import BatchMetadata, BlockRange, hex_hash

log = logging.getLogger("amp.devserver")

SERVICE_NAME = "arrow.flight.protocol.FlightService"
_TICKET_PREFIX = b"amp-dev-ticket/1:"
_POLL_SECONDS = 0.1
_BATCH_PIECE_BLOCKS = 10_000


class _StreamClosed(Exception):
    """The client went away or the server is stopping: end the stream quietly."""


@dataclass(frozen=True)
class ServiceOptions:
    dataset: str
    max_interval: int
    rows_per_message: int
    keepalive_seconds: float
    auth_token: str | None


def _ipc(obj: pa.Schema | pa.RecordBatch) -> tuple[bytes, pa.Buffer]:
    message = pa.ipc.read_message(obj.serialize())
    return message.metadata.to_pybytes(), message.body


def _header(context: grpc.ServicerContext, name: str) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key.lower() == name:
            return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return None


def _stream_header(value: str | None) -> bool | None:
    if value is None:
        return None
    lowered = value.strip().lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    return None


class FlightService:
    """Serves one simulated chain; one instance per dev server."""

    def __init__(
        self,
        chain: SimulatedChain,
        faults: Faults,
        options: ServiceOptions,
        stopping: threading.Event,
    ) -> None:
        self.chain = chain
        self.faults = faults
        self.options = options
        self.stopping = stopping
        self.engine = QueryEngine(options.dataset, options.rows_per_message)

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "GetFlightInfo": grpc.unary_unary_rpc_method_handler(self.get_flight_info),
                "DoGet": grpc.unary_stream_rpc_method_handler(self.do_get),
            },
        )

    # -- common gates ----------------------------------------------------------------

    def _admit(self, method: str, context: grpc.ServicerContext) -> None:
        """Authorization, then injected hangs and failures, in that order."""
        token = self.options.auth_token
        if token is not None and _header(context, "authorization") != f"Bearer {token}":
            context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "unauthenticated | Caused by: missing or invalid bearer token in the "
                "'authorization' header",
            )
        if self.faults.take_hang(method):
            while not self.faults.wait_released(_POLL_SECONDS):
                if not context.is_active() or self.stopping.is_set():
                    raise _StreamClosed
        failure = self.faults.take_failure(method)
        if failure is not None:
            context.abort(failure.status, failure.message)

    # -- GetFlightInfo -----------------------------------------------------------------

    def get_flight_info(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        try:
            self._admit("get_flight_info", context)
        except _StreamClosed:
            context.abort(grpc.StatusCode.CANCELLED, "server shutting down")
        try:
            sql = protowire.decode_statement_query(protowire.decode_descriptor_command(request))
        except protowire.UnsupportedCommand as exc:  # CommandGetTables & co., as Amp says
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except (protowire.WireError, UnicodeDecodeError) as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid request | Caused by: {exc}")
        try:
            planned = self.engine.plan(sql, _stream_header(_header(context, "amp-stream")))
        except QueryError as exc:
            context.abort(grpc.StatusCode[exc.status], exc.message)
        ticket = (
            _TICKET_PREFIX
            + json.dumps(
                {
                    "sql": planned.sql,
                    "stream": planned.streaming,
                    "resume": _header(context, "amp-resume") if planned.streaming else None,
                }
            ).encode()
        )
        return protowire.encode_flight_info(
            planned.schema.serialize().to_pybytes(), request, ticket
        )

    # -- DoGet -------------------------------------------------------------------------

    def do_get(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        try:
            self._admit("do_get", context)
            ticket = protowire.decode_ticket(request)
            if not ticket.startswith(_TICKET_PREFIX):
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "invalid ticket | Caused by: not a ticket issued by this server; "
                    "call GetFlightInfo first",
                )
            spec = json.loads(ticket[len(_TICKET_PREFIX) :])
            try:
                planned = self.engine.plan(spec["sql"], spec["stream"])
            except QueryError as exc:
                context.abort(grpc.StatusCode[exc.status], exc.message)
            faults = self.faults.take_stream_faults()
            messages = (
                self._stream(planned, spec.get("resume"), context, faults.columns)
                if planned.streaming
                else self._batch(planned, faults.columns)
            )
            yield from self._with_faults(messages, faults, context)
        except _StreamClosed:
            return
        except _InternalError as exc:
            context.abort(grpc.StatusCode.INTERNAL, str(exc))

    def _with_faults(
        self, messages: Iterator[bytes], faults: StreamFaults, context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        """``messages`` as one DoGet sends them, with that stream's faults applied."""
        cut_after = faults.cut_after
        cut_message = f"connection reset by peer (injected: stream cut after {cut_after} messages)"
        try:
            for count, message in enumerate(messages):
                if cut_after is not None and count >= cut_after:
                    context.abort(grpc.StatusCode.UNAVAILABLE, cut_message)
                if faults.end_after is not None and count >= faults.end_after:
                    return  # a clean end: status OK, as on a server shutdown
                if count == faults.foreign_at:
                    message = _on_network(message, faults.foreign_network)
                yield message
        finally:
            close = getattr(messages, "close", None)
            if close is not None:
                close()
        if cut_after is not None:
            context.abort(grpc.StatusCode.UNAVAILABLE, cut_message)

    def _data_messages(self, batches: list[pa.RecordBatch], metadata: bytes) -> Iterator[bytes]:
        step = self.options.rows_per_message
        for batch in batches:
            for offset in range(0, batch.num_rows, step):
                header, body = _ipc(batch.slice(offset, step))
                yield protowire.encode_flight_data(header, body, metadata)

    def _empty_message(self, schema: pa.Schema, metadata: bytes) -> bytes:
        header, body = _ipc(pa.RecordBatch.from_pylist([], schema=schema))
        return protowire.encode_flight_data(header, body, metadata)

    def _schema_message(self, schema: pa.Schema) -> bytes:
        return protowire.encode_flight_data(_ipc(schema)[0])

    def _batch(self, planned: PlannedQuery, columns: ColumnChange | None) -> Iterator[bytes]:
        """A batch query over the canonical chain as it is now (protocol §2, batch).

        A query of projections and filters over one table runs piece by piece, each piece
        sent as soon as it is ready, so memory stays bounded by a piece; any other query
        (joins, subqueries, aggregates relate rows of different blocks) runs in one pass.
        """
        first, head = self.chain.first_block, self.chain.head
        if not planned.tables or head < first:
            pieces: Iterator[list[pa.RecordBatch]] = iter(
                [self._run(planned, lambda name: pa.table({}))]
            )
            ranges: tuple[BlockRange, ...] = ()
        else:
            whole = self.chain.snapshot(first, head)
            ranges = (_block_range(whole),)
            step = _BATCH_PIECE_BLOCKS if planned.row_local else head - first + 1
            pieces = (
                self._run(planned, whole.slice(start, min(head, start + step - 1)).table)
                for start in range(first, head + 1, step)
            )
        running = BatchMetadata(ranges, False).to_json_bytes()
        first_piece = next(pieces)  # errors before the schema message, as a real server
        schema = columns.schema(planned.schema) if columns else planned.schema
        yield self._schema_message(schema)
        yield from self._data_messages(_changed(first_piece, columns), running)
        for piece in pieces:
            yield from self._data_messages(_changed(piece, columns), running)
        yield self._empty_message(schema, BatchMetadata(ranges, True).to_json_bytes())

    def _run(
        self, planned: PlannedQuery, tables: Callable[[str], pa.Table]
    ) -> list[pa.RecordBatch]:
        try:
            return self.engine.execute(planned, tables)
        except Exception as exc:
            raise _internal(exc) from exc

    def _stream(
        self,
        planned: PlannedQuery,
        resume_header: str | None,
        context: grpc.ServicerContext,
        columns: ColumnChange | None,
    ) -> Iterator[bytes]:
        """An endless stream of microbatches (protocol §2-§4)."""
        schema = columns.schema(planned.schema) if columns else planned.schema
        cursor = self._resume_cursor(resume_header, context)
        # The last range sent, as (end, hash); for a resume, the client's cursor.
        last: tuple[int, bytes] | None = cursor
        first_message = True
        while True:
            snapshot = self._next_range(last, context, restart_at_unknown=last is cursor)
            try:
                batches = _changed(self.engine.execute(planned, snapshot.table), columns)
            except Exception as exc:
                raise _internal(exc) from exc
            block_range = _block_range(snapshot)
            running = BatchMetadata((block_range,), False).to_json_bytes()
            if first_message:
                yield self._schema_message(schema)
                first_message = False
            for message in self._data_messages(batches, running):
                yield from self._delay(schema, running, context)
                yield message
            marker = self._empty_message(
                schema, BatchMetadata((block_range,), True).to_json_bytes()
            )
            yield marker
            if self.faults.take_repeat_marker():
                yield marker
            last = (snapshot.end, snapshot.hash)

    def _delay(
        self, schema: pa.Schema, running: bytes, context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        """Injected latency, with zero-row keep-alives while a microbatch runs long."""
        remaining = self.faults.latency_seconds
        since_keepalive = 0.0
        while remaining > 0:
            step = min(remaining, _POLL_SECONDS)
            time.sleep(step)
            remaining -= step
            since_keepalive += step
            self._check_open(context)
            if since_keepalive >= self.options.keepalive_seconds and remaining > 0:
                since_keepalive = 0.0
                yield self._empty_message(schema, running)

    def _check_open(self, context: grpc.ServicerContext) -> None:
        if self.stopping.is_set() or not context.is_active():
            raise _StreamClosed

    def _resume_cursor(
        self, header: str | None, context: grpc.ServicerContext
    ) -> tuple[int, bytes] | None:
        """The ``amp-resume`` cursor for this network; malformed JSON is ignored (§4)."""
        if header is None:
            return None
        try:
            cursors = json.loads(header)
        except json.JSONDecodeError:
            return None
        if not isinstance(cursors, dict):
            return None
        network = self.chain.network
        if network not in cursors:
            context.abort(
                grpc.StatusCode.INTERNAL,
                "streaming query failed | Caused by: invalid resume cursor -> "
                f"expected cursor for network '{network}', got networks {sorted(cursors)}",
            )
        entry = cursors[network]
        try:
            number = entry["number"]
            raw_hash = bytes.fromhex(str(entry["hash"]).removeprefix("0x"))
        except (KeyError, TypeError, ValueError):
            return None
        if type(number) is not int or number < 0 or len(raw_hash) != 32:
            return None
        return number, raw_hash

    def _next_range(
        self,
        last: tuple[int, bytes] | None,
        context: grpc.ServicerContext,
        restart_at_unknown: bool,
    ) -> RangeSnapshot:
        """Wait for the next microbatch after ``last`` and take its snapshot (§2-§4)."""
        chain = self.chain
        with chain.changed:
            while True:
                self._check_open(context)
                start = self._next_start(last, restart_at_unknown)
                if start is not None and start <= chain.head:
                    end = min(chain.head, start + self.options.max_interval - 1)
                    return chain.snapshot(start, end)
                chain.changed.wait(_POLL_SECONDS)

    def _next_start(self, last: tuple[int, bytes] | None, restart_at_unknown: bool) -> int | None:
        chain = self.chain
        if last is None:
            return chain.first_block
        number, block_hash = last
        if number > chain.head:
            return None  # the cursor's block is not available yet: wait
        kind = chain.classify(number, block_hash)
        if kind == "canonical":
            return number + 1
        if kind == "forked":
            return max(chain.common_ancestor(number, block_hash) + 1, chain.first_block)
        if restart_at_unknown:
            return max(number, chain.first_block)
        raise RuntimeError(f"block {number} sent on this stream is unknown to the chain")


def _block_range(snapshot: RangeSnapshot) -> BlockRange:
    return BlockRange(
        network=snapshot.network,
        start=snapshot.start,
        end=snapshot.end,
        hash=hex_hash(snapshot.hash),
        prev_hash=hex_hash(snapshot.prev_hash),
        timestamp=snapshot.timestamp,
    )


def _changed(batches: list[pa.RecordBatch], columns: ColumnChange | None) -> list[pa.RecordBatch]:
    return [columns.batch(batch) for batch in batches] if columns else batches


def _on_network(message: bytes, network: str) -> bytes:
    """``message`` with every range of its app_metadata moved to ``network``."""
    fields = dict(protowire.iter_fields(message))
    raw = fields.get(3)
    if not isinstance(raw, bytes) or not raw:
        return message
    metadata = json.loads(raw)
    for block_range in metadata.get("ranges", []):
        block_range["network"] = network
    header, body = fields[2], fields.get(1000, b"")
    assert isinstance(header, bytes) and isinstance(body, bytes)
    return protowire.encode_flight_data(header, body, json.dumps(metadata).encode())


class _InternalError(Exception):
    pass


def _internal(exc: Exception) -> Exception:
    log.exception("query execution failed")
    return _InternalError(f"query execution failed | Caused by: {exc}")
