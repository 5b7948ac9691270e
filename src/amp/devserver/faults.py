"""Fault injection for the dev server: failing calls, cut or ended streams, latency,
hangs, repeated markers, a foreign network, changed columns.

Why a first-class feature: users chaos-test their pipelines against ``amp dev`` the
way amp's own tests do. Every fault is armed for a number of calls and consumed by
them, so a test states exactly what goes wrong and when.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import grpc
import pyarrow as pa

METHODS = ("get_flight_info", "do_get")
STATUSES = tuple(code.name for code in grpc.StatusCode if code is not grpc.StatusCode.OK)


@dataclass
class _Failure:
    status: grpc.StatusCode
    message: str
    remaining: int


@dataclass(frozen=True)
class ColumnChange:
    """How one DoGet stream's columns differ from the schema its FlightInfo announced:
    reversed order, columns dropped, columns added (Int64, all zero), columns cast to
    another Arrow type (``retype``: pairs of column name and type alias)."""

    reverse: bool = False
    drop: tuple[str, ...] = ()
    add: tuple[str, ...] = ()
    retype: tuple[tuple[str, str], ...] = ()

    def batch(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        types = dict(self.retype)
        names, columns = [], []
        for name, column in zip(batch.schema.names, batch.columns, strict=True):
            if name in self.drop:
                continue
            if name in types:
                column = column.cast(pa.type_for_alias(types[name]))
            names.append(name)
            columns.append(column)
        for name in self.add:
            names.append(name)
            columns.append(pa.array([0] * batch.num_rows, pa.int64()))
        if self.reverse:
            names.reverse()
            columns.reverse()
        return pa.RecordBatch.from_arrays(columns, names=names)

    def schema(self, schema: pa.Schema) -> pa.Schema:
        return self.batch(pa.RecordBatch.from_pylist([], schema=schema)).schema


@dataclass(frozen=True)
class StreamFaults:
    """What one DoGet stream does wrong, counted in FlightData messages (schema included):
    drop with UNAVAILABLE after ``cut_after``, end cleanly after ``end_after``, send
    message number ``foreign_at`` (0-based) with its ranges on ``foreign_network``, and
    send every message with ``columns`` changed."""

    cut_after: int | None = None
    end_after: int | None = None
    foreign_at: int | None = None
    foreign_network: str = ""
    columns: ColumnChange | None = None


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; faults apply to {', '.join(METHODS)}")
    return method


def _status(name: str) -> grpc.StatusCode:
    try:
        code = grpc.StatusCode[name.upper()]
    except KeyError:
        code = grpc.StatusCode.OK
    if code is grpc.StatusCode.OK:
        raise ValueError(f"unknown gRPC status {name!r}; use one of {', '.join(STATUSES)}")
    return code


class Faults:
    """The faults armed on one dev server; safe to change while it serves."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failures: dict[str, list[_Failure]] = {method: [] for method in METHODS}
        self._cuts: list[int] = []
        self._ends: list[int] = []
        self._foreign: list[tuple[int, str]] = []
        self._column_changes: list[ColumnChange] = []
        self._repeat_markers = 0
        self._hangs: dict[str, int] = {method: 0 for method in METHODS}
        self._released = threading.Event()
        self.latency_seconds = 0.0

    def fail_next(
        self, method: str, status: str, times: int = 1, message: str | None = None
    ) -> None:
        """The next ``times`` calls of ``method`` fail with gRPC ``status``."""
        if times < 1:
            raise ValueError(f"times must be >= 1, got {times}")
        code = _status(status)
        text = message or f"injected fault: {code.name.lower().replace('_', ' ')}"
        with self._lock:
            self._failures[_check_method(method)].append(_Failure(code, text, times))

    def cut_stream_after(self, messages: int, times: int = 1) -> None:
        """The next ``times`` DoGet streams drop after sending ``messages`` FlightData
        messages (the schema message counts), as a dropped connection (UNAVAILABLE)."""
        if messages < 0 or times < 1:
            raise ValueError("messages must be >= 0 and times >= 1")
        with self._lock:
            self._cuts.extend([messages] * times)

    def end_stream_after(self, messages: int, times: int = 1) -> None:
        """The next ``times`` DoGet streams end cleanly (status OK, no error) after
        ``messages`` FlightData messages (the schema message counts): what a client sees
        when the server shuts down on SIGTERM or a proxy closes an idle stream."""
        if messages < 0 or times < 1:
            raise ValueError("messages must be >= 0 and times >= 1")
        with self._lock:
            self._ends.extend([messages] * times)

    def repeat_marker_next(self, times: int = 1) -> None:
        """The next ``times`` ``ranges_complete: true`` markers of streaming queries are
        each sent twice in a row (the same range again)."""
        if times < 1:
            raise ValueError(f"times must be >= 1, got {times}")
        with self._lock:
            self._repeat_markers += times

    def foreign_network_at(self, message: int, network: str = "sepolia") -> None:
        """In the next DoGet stream, FlightData message number ``message`` (0-based, the
        schema message is 0) carries its ranges on ``network``: a second network in one
        stream, which a streaming query never has."""
        if message < 1 or not network:
            raise ValueError("message must be >= 1 (0 is the schema) and network non-empty")
        with self._lock:
            self._foreign.append((message, network))

    def reorder_columns_next(self, times: int = 1) -> None:
        """The next ``times`` DoGet streams send their columns in reverse order; the
        FlightInfo schema keeps the query's order."""
        self.change_columns_next(reverse=True, times=times)

    def change_columns_next(
        self,
        *,
        drop: tuple[str, ...] = (),
        add: tuple[str, ...] = (),
        retype: dict[str, str] | None = None,
        reverse: bool = False,
        times: int = 1,
    ) -> None:
        """The next ``times`` DoGet streams send other columns than their FlightInfo
        announced: ``drop`` these, ``add`` these (Int64, zero), cast ``retype``'s
        columns to its Arrow type aliases (``{"log_index": "string"}``), ``reverse``
        the order. Columns that a stream's query does not return are left alone."""
        types = tuple((retype or {}).items())
        for name, alias in types:
            try:
                pa.type_for_alias(alias)
            except ValueError as exc:
                raise ValueError(f"retype of {name!r}: unknown Arrow type {alias!r}") from exc
        if times < 1:
            raise ValueError(f"times must be >= 1, got {times}")
        change = ColumnChange(reverse, tuple(drop), tuple(add), types)
        with self._lock:
            self._column_changes.extend([change] * times)

    def set_latency(self, seconds: float) -> None:
        """Delay every streamed data message by ``seconds`` (0 turns it off)."""
        if seconds < 0:
            raise ValueError(f"latency must be >= 0, got {seconds}")
        self.latency_seconds = seconds

    def hang_next(self, method: str, times: int = 1) -> None:
        """The next ``times`` calls of ``method`` hang until ``release()``, the client's
        deadline or cancellation, or server shutdown."""
        with self._lock:
            self._hangs[_check_method(method)] += times
            self._released.clear()

    def release(self) -> None:
        """Let every hanging call go on."""
        with self._lock:
            for method in METHODS:
                self._hangs[method] = 0
            self._released.set()

    def clear(self) -> None:
        """Disarm everything."""
        self.release()
        with self._lock:
            for method in METHODS:
                self._failures[method].clear()
            self._cuts.clear()
            self._ends.clear()
            self._foreign.clear()
            self._column_changes.clear()
            self._repeat_markers = 0
        self.latency_seconds = 0.0

    # -- used by the server ------------------------------------------------------------

    def take_failure(self, method: str) -> _Failure | None:
        with self._lock:
            pending = self._failures[method]
            if not pending:
                return None
            failure = pending[0]
            failure.remaining -= 1
            if failure.remaining == 0:
                pending.pop(0)
            return failure

    def take_hang(self, method: str) -> bool:
        with self._lock:
            if self._hangs[method] == 0:
                return False
            self._hangs[method] -= 1
            return True

    def wait_released(self, timeout: float) -> bool:
        return self._released.wait(timeout)

    def take_stream_faults(self) -> StreamFaults:
        """The faults of one DoGet stream, consumed."""
        with self._lock:
            foreign = self._foreign.pop(0) if self._foreign else (None, "")
            return StreamFaults(
                cut_after=self._cuts.pop(0) if self._cuts else None,
                end_after=self._ends.pop(0) if self._ends else None,
                foreign_at=foreign[0],
                foreign_network=foreign[1],
                columns=self._column_changes.pop(0) if self._column_changes else None,
            )

    def take_repeat_marker(self) -> bool:
        with self._lock:
            if self._repeat_markers == 0:
                return False
            self._repeat_markers -= 1
            return True
