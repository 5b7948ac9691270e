"""Fault injection for the dev server: failing calls, cut streams, latency, hangs.

Why a first-class feature: users chaos-test their pipelines against ``amp dev`` the
way amp's own tests do. Every fault is armed for a number of calls and consumed by
them, so a test states exactly what goes wrong and when.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import grpc

METHODS = ("get_flight_info", "do_get")
STATUSES = tuple(code.name for code in grpc.StatusCode if code is not grpc.StatusCode.OK)


@dataclass
class _Failure:
    status: grpc.StatusCode
    message: str
    remaining: int


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

    def take_cut(self) -> int | None:
        with self._lock:
            return self._cuts.pop(0) if self._cuts else None
