"""The circuit breaker and the adaptive rate limiter: the per-edge state that retries
consult. Re-exported by ``amp.streaming.resilience``."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum

from amp.errors import CircuitOpenError
from amp.streaming._resilience_config import (
    BackPressureConfig,
    CircuitBreakerConfig,
    Clock,
    SystemClock,
)

log = logging.getLogger("amp.streaming.resilience")  # one logger for the whole facade


# -- circuit breaker -------------------------------------------------------------------


class CircuitState(Enum):
    CLOSED = "CLOSED"
    OPEN = "OPEN"
    HALF_OPEN = "HALF-OPEN"


class CircuitBreaker:
    """CLOSED → OPEN after ``failure_threshold`` consecutive failures; OPEN rejects at
    once until ``timeout_ms`` passed; HALF-OPEN admits ``half_open_max_requests`` probes
    at a time, closes after ``success_threshold`` successes, re-opens on any failure.

    Thread-safe: workers share one breaker. While CLOSED with no failures, a call reads
    one attribute and takes no lock.
    """

    def __init__(
        self, config: CircuitBreakerConfig | None = None, clock: Clock | None = None, name: str = ""
    ) -> None:
        self.config = config or CircuitBreakerConfig()
        self.clock = clock or SystemClock()
        self.name = name
        self._lock = threading.Lock()
        self._state = CircuitState.CLOSED
        self._opened_at = 0.0
        self._probes_in_flight = 0
        # Each HALF-OPEN period has a number; a thread admitted as a probe remembers it,
        # so that only real probes (not slow calls admitted earlier) free a probe slot.
        self._period = 0
        self._local = threading.local()
        self.consecutive_failures = 0
        self.consecutive_successes = 0
        self.total_failures = 0
        self.total_successes = 0
        self.rejected_calls = 0
        self.times_opened = 0
        # The last failure any caller recorded, so that a caller that was only ever
        # rejected can still say what is wrong with the service.
        self.last_error: BaseException | None = None

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name or 'unnamed'}, {self.state.value})"

    @property
    def state(self) -> CircuitState:
        if self._state is CircuitState.OPEN and self._timeout_passed():
            return CircuitState.HALF_OPEN
        return self._state

    def is_open(self) -> bool:
        """True while calls are rejected without being tried."""
        return self.state is CircuitState.OPEN

    def _timeout_passed(self) -> bool:
        return self.clock.monotonic() - self._opened_at >= self.config.timeout_ms / 1000.0

    def before_call(self) -> None:
        """Admit a call or raise CircuitOpenError; a HALF-OPEN admission is a probe."""
        if self._state is CircuitState.CLOSED or not self.config.enabled:
            return
        with self._lock:
            if self._state is CircuitState.OPEN:
                if not self._timeout_passed():
                    self.rejected_calls += 1
                    remaining = self.config.timeout_ms / 1000.0 - (
                        self.clock.monotonic() - self._opened_at
                    )
                    raise CircuitOpenError(
                        f"circuit breaker{self._label()} is OPEN after "
                        f"{self.consecutive_failures} consecutive failures; calls are rejected "
                        f"for {remaining:.1f} s more, then one probe tests recovery",
                        retry_in_seconds=remaining,
                    )
                self._state = CircuitState.HALF_OPEN
                self._probes_in_flight = 0
                self._period += 1
                self.consecutive_successes = 0
                log.info(
                    "Circuit breaker HALF-OPEN after %dms timeout. Testing service recovery...",
                    self.config.timeout_ms,
                )
            if self._probes_in_flight >= self.config.half_open_max_requests:
                self.rejected_calls += 1
                raise CircuitOpenError(
                    f"circuit breaker{self._label()} is HALF-OPEN and already testing "
                    f"recovery with {self._probes_in_flight} request(s); try again shortly",
                    retry_in_seconds=0.1,
                )
            self._probes_in_flight += 1
            held = self._held_probes()
            held[self._period] = held.get(self._period, 0) + 1

    def _held_probes(self) -> dict[int, int]:
        """This thread's probe admissions, by HALF-OPEN period."""
        held: dict[int, int] | None = getattr(self._local, "probes", None)
        if held is None:
            held = self._local.probes = {}
        return held

    def _end_probe(self) -> bool:
        """Under the lock: whether the call ending on this thread was a probe of the
        current HALF-OPEN period; if so its slot is freed."""
        held = self._held_probes()
        count = held.pop(self._period, 0)
        held.clear()  # probes of earlier periods no longer hold slots
        if count == 0 or self._state is not CircuitState.HALF_OPEN:
            return False
        if count > 1:
            held[self._period] = count - 1
        self._probes_in_flight = max(self._probes_in_flight - 1, 0)
        return True

    def record_success(self) -> None:
        if self._state is CircuitState.CLOSED and self.consecutive_failures == 0:
            self.total_successes += 1
            return
        with self._lock:
            self.total_successes += 1
            self.consecutive_failures = 0
            if self._end_probe():
                self.consecutive_successes += 1
                if self.consecutive_successes >= self.config.success_threshold:
                    self._state = CircuitState.CLOSED
                    self.consecutive_successes = 0
                    log.info(
                        "Circuit breaker CLOSED. Service recovered, resuming normal operation."
                    )

    def record_failure(self) -> None:
        if not self.config.enabled:
            return
        with self._lock:
            self.total_failures += 1
            self.consecutive_failures += 1
            self.consecutive_successes = 0
            if self._state is CircuitState.HALF_OPEN:
                self._end_probe()
                self._open()
                log.warning(
                    "Circuit breaker OPEN: recovery test failed. Rejecting requests for %dms.",
                    self.config.timeout_ms,
                )
            elif (
                self._state is CircuitState.CLOSED
                and self.consecutive_failures >= self.config.failure_threshold
            ):
                self._open()
                log.warning(
                    "Circuit breaker OPEN after %d consecutive failures. "
                    "Rejecting requests for %dms.",
                    self.consecutive_failures,
                    self.config.timeout_ms,
                )

    def record_neutral(self) -> None:
        """An admitted call ended in a way that says nothing about the service's health
        (a permanent error such as bad input): only its probe slot is released."""
        if self._state is CircuitState.HALF_OPEN:
            with self._lock:
                self._end_probe()

    def _open(self) -> None:
        self._state = CircuitState.OPEN
        self._opened_at = self.clock.monotonic()
        self.times_opened += 1

    def _label(self) -> str:
        return f" {self.name!r}" if self.name else ""

    @contextmanager
    def guard(self) -> Iterator[None]:
        """``with breaker.guard(): call()``: admit, then record the outcome."""
        self.before_call()
        try:
            yield
        except BaseException:
            self.record_failure()
            raise
        self.record_success()


# -- adaptive rate limiting -------------------------------------------------------------


class AdaptiveRateLimiter:
    """A delay before each request that grows on 429s and timeouts, shrinks on success."""

    def __init__(self, config: BackPressureConfig | None = None, clock: Clock | None = None):
        self.config = config or BackPressureConfig()
        self.clock = clock or SystemClock()
        self._delay_ms = float(self.config.initial_delay_ms) if self.config.enabled else 0.0
        self._lock = threading.Lock()

    def get_current_delay(self) -> int:
        """The current delay in whole milliseconds."""
        return int(self._delay_ms)

    def wait(self) -> None:
        """Sleep the current delay (nothing at all while it is zero)."""
        if self._delay_ms > 0:
            self.clock.sleep(self._delay_ms / 1000.0)

    def record_success(self) -> None:
        if self._delay_ms == 0:
            return
        with self._lock:
            self._delay_ms *= self.config.recovery_factor
            if self._delay_ms < 1.0:  # no floor: back to full speed
                self._delay_ms = 0.0

    def record_rate_limit(self) -> None:
        if self.config.enabled and self.config.adapt_on_429:
            with self._lock:
                self._delay_ms = min(self._delay_ms * 2 + 1000, self.config.max_delay_ms)

    def record_timeout(self) -> None:
        if self.config.enabled and self.config.adapt_on_timeout:
            with self._lock:
                self._delay_ms = min(self._delay_ms * 1.5 + 500, self.config.max_delay_ms)
