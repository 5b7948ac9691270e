"""Helpers of the resilience tests: an injected clock, and an HTTP-style exception."""

from __future__ import annotations

import math
import threading


class FakeClock:
    """A ``Clock`` whose time only moves when told to: ``sleep`` advances it and is recorded.

    Like ``time.sleep``, a negative or NaN sleep is a ValueError, so code that would crash
    on the real clock crashes here too. Thread-safe, for the breaker's hammering test.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._lock = threading.Lock()
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self._now

    def sleep(self, seconds: float) -> None:
        if math.isnan(seconds) or seconds < 0:
            raise ValueError(f"sleep length must be non-negative, got {seconds!r}")
        with self._lock:
            self.sleeps.append(seconds)
            self._now += seconds

    def wait(self, seconds: float, stop: threading.Event) -> None:
        """A stop set before the wait ends it at once; otherwise the whole wait passes."""
        if not stop.is_set():
            self.sleep(seconds)

    def advance(self, seconds: float) -> None:
        """Let time pass without it counting as a sleep of the code under test."""
        with self._lock:
            self._now += seconds


class HTTPStatusError(Exception):
    """An HTTP client's error: a ``status_code``, optionally a ``retry_after`` hint."""

    def __init__(self, status_code: int, message: str = "", retry_after: float | None = None):
        super().__init__(message or f"HTTP {status_code}")
        self.status_code = status_code
        if retry_after is not None:
            self.retry_after = retry_after


class HTTPResponse:
    """The ``response`` an HTTP client attaches to its error: status and headers."""

    def __init__(self, status_code: int, headers: dict[str, str]) -> None:
        self.status_code = status_code
        self.headers = headers


class HTTPResponseError(Exception):
    """An error carrying its ``response`` (as requests' and httpx's errors do)."""

    def __init__(self, response: HTTPResponse) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response
