"""The retry policy: one operation through the rate limiter, the breaker and the
retries. Re-exported by ``amp.streaming.resilience``."""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from typing import TypeVar

from amp.errors import CircuitOpenError, FatalLoadError, LoadStopped
from amp.streaming._breaker import AdaptiveRateLimiter, CircuitBreaker
from amp.streaming._resilience_config import (
    Clock,
    ExponentialBackoff,
    ResilienceConfig,
    SystemClock,
)
from amp.streaming.classify import ErrorClassifier

log = logging.getLogger("amp.streaming.resilience")  # one logger for the whole facade

T = TypeVar("T")

# -- the policy -------------------------------------------------------------------------


class RetryPolicy:
    """Runs an operation through the rate limiter, the circuit breaker and the retries.

    A permanent failure, or a transient one after ``max_retries``, raises
    FatalLoadError with the guide's FATAL message (the original as ``__cause__``).

    A call rejected by an open breaker was never tried, so it is not an attempt: the
    caller waits for the breaker's next probe instead of spending a retry, and workers
    sharing the breaker wait together. That waiting is bounded by the retry budget (the
    whole backoff schedule plus one breaker timeout); past it the load stops, naming the
    breaker and the last real error.
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
        self.last_error: BaseException | None = None  # the last error of a real attempt
        self._waited_on_breaker = 0.0
        # The load's stop request: a wait before a retry ends when it is set.
        self.stop: threading.Event | None = None
        # Told of each failure about to be retried (the load's retry counter).
        self.on_retry: Callable[[], None] | None = None

    def _budget_seconds(self) -> float:
        retry = self.config.retry
        attempts = retry.max_retries if retry.enabled else 0
        schedule = sum(self.backoff.base_delay(attempt) for attempt in range(attempts))
        return schedule + self.config.circuit_breaker.timeout_ms / 1000.0

    def _fatal(self, message: str, exc: BaseException) -> FatalLoadError:
        self.backoff.reset()
        self._waited_on_breaker = 0.0
        log.error(message)
        error = FatalLoadError(message)
        error.__cause__ = exc
        return error

    def _last_error_text(self, exc: CircuitOpenError) -> str:
        underlying = self.last_error or self.breaker.last_error
        return f"{underlying} (then: {exc})" if underlying is not None else str(exc)

    def failure(self, exc: BaseException, what: str) -> float:
        """Record a failure; the seconds to wait before retrying, or FatalLoadError."""
        if isinstance(exc, CircuitOpenError):
            return self._rejected(exc, what)
        self.last_error = exc
        found = self.classifier.classify(exc)
        if found.transient:
            self.breaker.last_error = exc
            self.breaker.record_failure()
        else:
            self.breaker.record_neutral()
        if found.rate_limited:
            self.rate_limiter.record_rate_limit()
        elif found.timed_out:
            self.rate_limiter.record_timeout()
        if not found.transient:
            raise self._fatal(
                f"FATAL: Permanent error {what} (not retryable). Stopping client to prevent "
                f"data loss. Error: {exc}",
                exc,
            )
        delay = self.backoff.next_delay(found.retry_after_seconds)
        if delay is None:
            retries = self.config.retry.max_retries if self.config.retry.enabled else 0
            raise self._fatal(
                f"FATAL: Max retries ({retries}) exceeded. Stopping client to prevent data "
                f"loss. Last error: {exc}",
                exc,
            )
        log.info(
            "Retry attempt %d/%d for transient error: %s",
            self.backoff.attempt,
            self.config.retry.max_retries,
            exc,
        )
        log.info("Backing off for %.1f seconds...", delay)
        if self.on_retry is not None:
            self.on_retry()
        return delay

    def _rejected(self, exc: CircuitOpenError, what: str) -> float:
        """An open breaker turned the call away: wait for its probe, within the budget."""
        wait = max(exc.retry_in_seconds, 0.05)
        if not self.config.retry.enabled:
            raise self._fatal(
                "FATAL: Max retries (0) exceeded. Stopping client to prevent data loss. "
                f"Last error: {self._last_error_text(exc)}",
                exc,
            )
        if self._waited_on_breaker + wait > self._budget_seconds():
            raise self._fatal(
                f"FATAL: the circuit breaker stayed open longer than the retry budget "
                f"({self._budget_seconds():.0f} s) while {what}. Stopping client to prevent "
                f"data loss. Last error: {self._last_error_text(exc)}",
                exc,
            )
        self._waited_on_breaker += wait
        log.info("Waiting %.1f seconds for the open circuit breaker to probe recovery", wait)
        return wait

    def success(self) -> None:
        self.breaker.record_success()
        self.rate_limiter.record_success()
        self.backoff.reset()
        self._waited_on_breaker = 0.0
        self.last_error = None

    def progress(self) -> None:
        """Real progress inside a long-lived call (a committed microbatch of a stream):
        counted as one successful request of this edge, admitted like one, so that a
        HALF-OPEN breaker closes while a healthy stream goes on."""
        try:
            self.breaker.before_call()
        except CircuitOpenError:
            return
        self.success()

    def pause(self, seconds: float) -> None:
        """Wait before the next attempt; LoadStopped when the load is asked to stop
        meanwhile (a stop must not wait out a backoff)."""
        if self.stop is None:
            self.clock.sleep(seconds)
            return
        self.clock.wait(seconds, self.stop)
        if self.stop.is_set():
            raise LoadStopped("the load was stopped while waiting to retry")

    def call(
        self,
        operation: Callable[[], T],
        *,
        what: str = "loading batch",
        before_retry: Callable[[], None] | None = None,
        retry_operation: Callable[[], T] | None = None,
        success_ends_retries: bool = True,
        passes: tuple[type[BaseException], ...] = (),
    ) -> T:
        """``operation()`` with retries; ``before_retry`` runs after each failure (say, a
        rollback), and ``retry_operation`` (default: ``operation``) on each retry.

        Errors of the ``passes`` types belong to another edge: they propagate at once,
        leaving this edge's breaker and retries untouched.

        ``success_ends_retries=False`` is for an operation whose success proves little
        (opening a stream that may still fail): the backoff and the breaker's failure
        count carry on until the caller calls ``success()`` on real progress.
        """
        current = operation
        while True:
            self.rate_limiter.wait()
            try:
                self.breaker.before_call()
            except CircuitOpenError as exc:  # not tried: nothing to undo, no attempt spent
                self.pause(self._rejected(exc, what))
                continue
            try:
                result = current()
            except FatalLoadError:
                self.breaker.record_neutral()
                raise  # already decided: stop, with its own message
            except passes:
                self.breaker.record_neutral()
                raise
            except Exception as exc:
                delay = self.failure(exc, what)
                if before_retry is not None:
                    before_retry()
                self.pause(delay)
                current = retry_operation or operation
                continue
            if success_ends_retries:
                self.success()
            else:
                self.breaker.record_neutral()
            return result


class Edge:
    """One side of a load, the Amp server or a destination connection.

    Every worker of the edge shares its circuit breaker (an outage is one fact, seen by
    all), while each worker gets its own rate limiter (back pressure follows each
    worker's own requests) and its own retry loop. Server and destination are separate
    edges, so a server outage never opens a destination's breaker.

    ``classifier`` decides which failures of this edge are worth retrying (a destination
    written outside amp brings its own, see ``DataLoader.error_classifier``).
    """

    def __init__(
        self,
        name: str,
        config: ResilienceConfig | None = None,
        clock: Clock | None = None,
        classifier: type[ErrorClassifier] | ErrorClassifier = ErrorClassifier,
    ) -> None:
        self.name = name
        self.config = config or ResilienceConfig()
        self.clock: Clock = clock or SystemClock()
        self.classifier = classifier
        self.breaker = CircuitBreaker(self.config.circuit_breaker, self.clock, name=name)
        self._limiters: dict[int, AdaptiveRateLimiter] = {}

    def __repr__(self) -> str:
        return f"Edge({self.name!r}, {self.breaker.state.value})"

    def rate_limiter(self, worker_id: int = 0) -> AdaptiveRateLimiter:
        """The rate limiter of one worker (created on first use)."""
        limiter = self._limiters.get(worker_id)
        if limiter is None:
            limiter = AdaptiveRateLimiter(self.config.back_pressure, self.clock)
            limiter = self._limiters.setdefault(worker_id, limiter)
        return limiter

    def policy(self, worker_id: int = 0) -> RetryPolicy:
        """A fresh retry loop for one worker: the shared breaker, its own limiter."""
        return RetryPolicy(
            self.config,
            breaker=self.breaker,
            rate_limiter=self.rate_limiter(worker_id),
            clock=self.clock,
            classifier=self.classifier,
        )
