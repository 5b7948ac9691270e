"""The guide's resilience patterns: retry with backoff, circuit breaker, adaptive rate
limiting, and the policy that runs an operation through all three.

Defaults (the project's choices where the guide contradicts itself): retry 5 times from
2 s doubling to at most 120 s with 50-150% jitter; the breaker opens after 5
consecutive failures, probes after 30 s one request at a time and closes after 2
successes; the rate limiter starts at 0 ms, caps at 5 s, on 429 goes to ``d*2+1000``,
on a timeout to ``d*1.5+500``, and on success to ``d*0.9``.

Time and randomness are injected (``Clock``, ``random.Random``) so that tests need no
sleeps: a test clock's ``sleep`` just advances its time.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any, Protocol, TypeVar

from amp.config import check_keys
from amp.errors import CircuitOpenError, ConfigError, FatalLoadError
from amp.streaming.classify import Classification, ErrorClassifier, ErrorKind

__all__ = [
    "AdaptiveRateLimiter",
    "BackPressureConfig",
    "CircuitBreaker",
    "CircuitBreakerConfig",
    "CircuitOpenError",
    "CircuitState",
    "Classification",
    "Clock",
    "ErrorClassifier",
    "ErrorKind",
    "ExponentialBackoff",
    "ResilienceConfig",
    "RetryConfig",
    "RetryPolicy",
    "SystemClock",
]

log = logging.getLogger("amp.streaming.resilience")

T = TypeVar("T")


class Clock(Protocol):
    """Where resilience reads time and waits: the system's, or a test's."""

    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


# -- configuration ---------------------------------------------------------------------


def _validate_fields(config: Any, where: str) -> None:
    """Type-check every field against its default's type (bools are not numbers)."""
    for spec in fields(config):
        value = getattr(config, spec.name)
        default = spec.default
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{where}[{spec.name!r}] must be True or False, got {value!r}")
        elif isinstance(default, int | float):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{where}[{spec.name!r}] must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ConfigError(f"{where}[{spec.name!r}] must be a finite number, got {value!r}")


def _at_least(where: str, name: str, value: float, minimum: float) -> None:
    if value < minimum:
        raise ConfigError(f"{where}[{name!r}] must be >= {minimum}, got {value!r}")


class _FromDict:
    """``from_dict`` with the guide's keys: unknown keys are errors with a suggestion."""

    section: str = ""

    @classmethod
    def from_dict(cls: Any, data: Mapping[str, Any] | None) -> Any:
        if data is None:
            return cls()
        if isinstance(data, cls):
            return data
        where = f"resilience[{cls.section!r}]"
        check_keys(where, data, [spec.name for spec in fields(cls)])
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return {spec.name: getattr(self, spec.name) for spec in fields(self)}  # type: ignore[arg-type]


@dataclass(frozen=True)
class RetryConfig(_FromDict):
    """Retries of transient failures: delay ``initial * multiplier**attempt``, capped."""

    enabled: bool = True
    max_retries: int = 5
    initial_backoff_ms: float = 2000
    max_backoff_ms: float = 120_000
    backoff_multiplier: float = 2.0
    jitter: bool = True
    section = "retry"

    def __post_init__(self) -> None:
        where = "resilience['retry']"
        _validate_fields(self, where)
        if not isinstance(self.max_retries, int):
            raise ConfigError(f"{where}['max_retries'] must be a whole number")
        _at_least(where, "max_retries", self.max_retries, 0)
        _at_least(where, "initial_backoff_ms", self.initial_backoff_ms, 0)
        _at_least(where, "max_backoff_ms", self.max_backoff_ms, self.initial_backoff_ms)
        _at_least(where, "backoff_multiplier", self.backoff_multiplier, 1.0)


@dataclass(frozen=True)
class CircuitBreakerConfig(_FromDict):
    """When to stop calling a failing service, and how to test that it recovered."""

    enabled: bool = True
    failure_threshold: int = 5
    success_threshold: int = 2
    timeout_ms: float = 30_000
    half_open_max_requests: int = 1
    section = "circuit_breaker"

    def __post_init__(self) -> None:
        where = "resilience['circuit_breaker']"
        _validate_fields(self, where)
        for name in ("failure_threshold", "success_threshold", "half_open_max_requests"):
            if not isinstance(getattr(self, name), int):
                raise ConfigError(f"{where}[{name!r}] must be a whole number")
            _at_least(where, name, getattr(self, name), 1)
        _at_least(where, "timeout_ms", self.timeout_ms, 0)


@dataclass(frozen=True)
class BackPressureConfig(_FromDict):
    """The adaptive delay before each destination write."""

    enabled: bool = True
    initial_delay_ms: float = 0
    max_delay_ms: float = 5000
    adapt_on_429: bool = True
    adapt_on_timeout: bool = True
    recovery_factor: float = 0.9
    section = "back_pressure"

    def __post_init__(self) -> None:
        where = "resilience['back_pressure']"
        _validate_fields(self, where)
        _at_least(where, "initial_delay_ms", self.initial_delay_ms, 0)
        _at_least(where, "max_delay_ms", self.max_delay_ms, self.initial_delay_ms)
        if not 0 < self.recovery_factor <= 1:
            raise ConfigError(
                f"{where}['recovery_factor'] must be in (0, 1] (0.9 = 10% faster per "
                f"success), got {self.recovery_factor!r}"
            )


@dataclass(frozen=True)
class ResilienceConfig:
    """A connection's ``config['resilience']``."""

    retry: RetryConfig = field(default_factory=RetryConfig)
    circuit_breaker: CircuitBreakerConfig = field(default_factory=CircuitBreakerConfig)
    back_pressure: BackPressureConfig = field(default_factory=BackPressureConfig)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> ResilienceConfig:
        if data is None:
            return cls()
        check_keys("resilience config", data, ("retry", "circuit_breaker", "back_pressure"))
        return cls(
            retry=RetryConfig.from_dict(data.get("retry")),
            circuit_breaker=CircuitBreakerConfig.from_dict(data.get("circuit_breaker")),
            back_pressure=BackPressureConfig.from_dict(data.get("back_pressure")),
        )


# -- backoff ----------------------------------------------------------------------------


class ExponentialBackoff:
    """Delays for successive retries; ``None`` once ``max_retries`` are spent."""

    def __init__(self, config: RetryConfig, rng: random.Random | None = None) -> None:
        self.config = config
        self.rng = rng or random.Random()
        self.attempt = 0

    def base_delay(self, attempt: int) -> float:
        """Seconds before retry ``attempt`` (0-based), without jitter, capped."""
        config = self.config
        try:
            delay_ms = config.initial_backoff_ms * config.backoff_multiplier**attempt
        except OverflowError:  # far past the cap
            delay_ms = config.max_backoff_ms
        return min(delay_ms, config.max_backoff_ms) / 1000.0

    def next_delay(self, hint_seconds: float | None = None) -> float | None:
        """Seconds to wait before the next retry, or None when retries are exhausted.

        A server's Retry-After ``hint_seconds`` replaces the computed delay (still capped).
        """
        config = self.config
        if not config.enabled or self.attempt >= config.max_retries:
            return None
        if hint_seconds is not None:
            delay = min(hint_seconds, config.max_backoff_ms / 1000.0)
        else:
            delay = self.base_delay(self.attempt)
            if config.jitter:
                delay = min(delay * self.rng.uniform(0.5, 1.5), config.max_backoff_ms / 1000.0)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0


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


# -- the policy -------------------------------------------------------------------------


class RetryPolicy:
    """Runs an operation through the rate limiter, the circuit breaker and the retries.

    A permanent failure, or a transient one after ``max_retries``, raises
    FatalLoadError with the guide's FATAL message (the original as ``__cause__``).
    """

    def __init__(
        self,
        config: ResilienceConfig | None = None,
        *,
        breaker: CircuitBreaker | None = None,
        rate_limiter: AdaptiveRateLimiter | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        classifier: type[ErrorClassifier] | ErrorClassifier = ErrorClassifier,
    ) -> None:
        self.config = config or ResilienceConfig()
        self.clock = clock or SystemClock()
        self.breaker = breaker or CircuitBreaker(self.config.circuit_breaker, self.clock)
        self.rate_limiter = rate_limiter or AdaptiveRateLimiter(
            self.config.back_pressure, self.clock
        )
        self.backoff = ExponentialBackoff(self.config.retry, rng)
        self.classifier = classifier

    def failure(self, exc: BaseException, what: str) -> float:
        """Record a failure; the seconds to wait before retrying, or FatalLoadError."""
        found = self.classifier.classify(exc)
        if not isinstance(exc, CircuitOpenError):
            if found.transient:
                self.breaker.record_failure()
            else:
                self.breaker.record_neutral()
        if found.rate_limited:
            self.rate_limiter.record_rate_limit()
        elif found.timed_out:
            self.rate_limiter.record_timeout()
        if not found.transient:
            self.backoff.reset()
            message = (
                f"FATAL: Permanent error {what} (not retryable). Stopping client to prevent "
                f"data loss. Error: {exc}"
            )
            log.error(message)
            raise FatalLoadError(message) from exc
        hint = found.retry_after_seconds
        if isinstance(exc, CircuitOpenError):  # wait for the probe, never less than a backoff
            hint = max(exc.retry_in_seconds, self.backoff.base_delay(self.backoff.attempt))
        delay = self.backoff.next_delay(hint)
        if delay is None:
            self.backoff.reset()
            retries = self.config.retry.max_retries if self.config.retry.enabled else 0
            message = (
                f"FATAL: Max retries ({retries}) exceeded. Stopping client to prevent data "
                f"loss. Last error: {exc}"
            )
            log.error(message)
            raise FatalLoadError(message) from exc
        log.info(
            "Retry attempt %d/%d for transient error: %s",
            self.backoff.attempt,
            self.config.retry.max_retries,
            exc,
        )
        log.info("Backing off for %.1f seconds...", delay)
        return delay

    def success(self) -> None:
        self.breaker.record_success()
        self.rate_limiter.record_success()
        self.backoff.reset()

    def call(
        self,
        operation: Callable[[], T],
        *,
        what: str = "loading batch",
        before_retry: Callable[[], None] | None = None,
        retry_operation: Callable[[], T] | None = None,
        success_ends_retries: bool = True,
    ) -> T:
        """``operation()`` with retries; ``before_retry`` runs after each failure (say, a
        rollback), and ``retry_operation`` (default: ``operation``) on each retry.

        ``success_ends_retries=False`` is for an operation whose success proves little
        (opening a stream that may still fail): the backoff and the breaker's failure
        count carry on until the caller calls ``success()`` on real progress.
        """
        current = operation
        while True:
            self.rate_limiter.wait()
            try:
                self.breaker.before_call()
                result = current()
            except FatalLoadError:
                self.breaker.record_neutral()
                raise  # already decided: stop, with its own message
            except Exception as exc:
                delay = self.failure(exc, what)
                if before_retry is not None:
                    before_retry()
                self.clock.sleep(delay)
                current = retry_operation or operation
                continue
            if success_ends_retries:
                self.success()
            else:
                self.breaker.record_neutral()
            return result
