"""RetryPolicy.call: retries with backoff through a FakeClock, FATAL stops, logs, the rate
limiter and the circuit breaker working together."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

import psycopg.errors as pg_errors
import pyarrow as pa
import pytest
from resilience_support import FakeClock, HTTPStatusError

from amp.errors import AmpError, CircuitOpenError, FatalLoadError
from amp.streaming.resilience import (
    AdaptiveRateLimiter,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitState,
    ExponentialBackoff,
    ResilienceConfig,
    RetryConfig,
    RetryPolicy,
)

LOGGER = "amp.streaming.resilience"
NO_JITTER = ResilienceConfig(retry=RetryConfig(jitter=False))
PERMANENT_PREFIX = (
    "FATAL: Permanent error loading batch (not retryable). Stopping client to prevent data "
    "loss. Error: "
)


class Flaky:
    """An operation that raises ``errors`` in turn, then returns ``result``."""

    def __init__(self, errors: list[BaseException], result: str = "loaded") -> None:
        self.errors = list(errors)
        self.result = result
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.result


def _policy(
    config: ResilienceConfig = NO_JITTER, clock: FakeClock | None = None, **kwargs: object
) -> tuple[RetryPolicy, FakeClock]:
    clock = clock or FakeClock()
    return RetryPolicy(config, clock=clock, **kwargs), clock  # type: ignore[arg-type]


def _resets(count: int) -> list[BaseException]:
    return [ConnectionResetError("Connection timeout") for _ in range(count)]


# -- retries -----------------------------------------------------------------------------


@pytest.mark.parametrize("failures", [0, 1, 2, 3, 4, 5])
def test_succeeds_after_k_transient_failures_sleeping_the_backoff(failures: int) -> None:
    policy, clock = _policy()
    operation = Flaky(_resets(failures))
    assert policy.call(operation) == "loaded"
    assert operation.calls == failures + 1
    assert clock.sleeps == [2.0, 4.0, 8.0, 16.0, 32.0][:failures]


def test_jittered_sleeps_follow_the_backoff_sequence() -> None:
    config = ResilienceConfig(circuit_breaker=CircuitBreakerConfig(enabled=False))
    policy, clock = _policy(config, rng=random.Random(2024))
    assert policy.call(Flaky(_resets(5))) == "loaded"
    expected = ExponentialBackoff(config.retry, random.Random(2024))
    assert clock.sleeps == [expected.next_delay() for _ in range(5)]
    for attempt, slept in enumerate(clock.sleeps):
        assert 0.5 * 2.0 * 2**attempt <= slept <= 1.5 * 2.0 * 2**attempt


def test_transient_errors_of_every_kind_are_retried() -> None:
    errors: list[BaseException] = [
        pg_errors.SerializationFailure(),
        HTTPStatusError(503),
        pa.ArrowInvalid("gRPC returned resource exhausted error, with message: slow down"),
        TimeoutError("timed out"),
    ]
    policy, _ = _policy(ResilienceConfig(retry=RetryConfig(jitter=False, max_retries=4)))
    operation = Flaky(errors)
    assert policy.call(operation) == "loaded"
    assert operation.calls == 5


def test_before_retry_after_each_failure_and_retry_operation_on_retries() -> None:
    events: list[str] = []
    policy, clock = _policy()
    failures = _resets(3)

    def first() -> str:
        events.append("operation")
        raise failures.pop(0)

    def again() -> str:
        events.append("retry_operation")
        if failures:
            raise failures.pop(0)
        return "loaded"

    def rollback() -> None:
        events.append(f"before_retry after {len(clock.sleeps)} sleeps")

    assert policy.call(first, before_retry=rollback, retry_operation=again) == "loaded"
    assert events == [
        "operation",
        "before_retry after 0 sleeps",
        "retry_operation",
        "before_retry after 1 sleeps",
        "retry_operation",
        "before_retry after 2 sleeps",
        "retry_operation",
    ]


def test_without_retry_operation_the_operation_is_retried() -> None:
    policy, _ = _policy()
    operation = Flaky(_resets(2))
    rollbacks: list[int] = []
    policy.call(operation, before_retry=lambda: rollbacks.append(operation.calls))
    assert operation.calls == 3
    assert rollbacks == [1, 2]


# -- fatal stops -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        ValueError('column "invalid_field" does not exist'),
        pg_errors.SyntaxError('syntax error at or near "SELEC"'),
        HTTPStatusError(400, "Bad Request"),
        pa.ArrowInvalid("bad sql"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_permanent_error_is_fatal_at_once(error: BaseException) -> None:
    policy, clock = _policy()
    operation = Flaky([error])
    rollbacks: list[bool] = []
    with pytest.raises(FatalLoadError) as info:
        policy.call(operation, before_retry=lambda: rollbacks.append(True))
    assert isinstance(info.value, RuntimeError)
    assert isinstance(info.value, AmpError)
    assert str(info.value) == PERMANENT_PREFIX + str(error)
    assert info.value.__cause__ is error
    assert operation.calls == 1
    assert clock.sleeps == []
    assert rollbacks == []
    assert policy.breaker.total_failures == 0  # bad input says nothing of the service


def test_permanent_error_after_transient_ones_is_fatal_at_once() -> None:
    policy, clock = _policy()
    error = HTTPStatusError(404, "Not Found")
    operation = Flaky([*_resets(2), error])
    with pytest.raises(FatalLoadError) as info:
        policy.call(operation)
    assert info.value.__cause__ is error
    assert operation.calls == 3
    assert clock.sleeps == [2.0, 4.0]


def test_permanent_message_names_what_was_being_done() -> None:
    policy, _ = _policy()
    with pytest.raises(FatalLoadError) as info:
        policy.call(Flaky([HTTPStatusError(403, "Forbidden")]), what="querying the server")
    assert str(info.value).startswith("FATAL: Permanent error querying the server (not ")


def test_exhausting_retries_is_fatal_with_the_last_error() -> None:
    config = ResilienceConfig(
        retry=RetryConfig(jitter=False), circuit_breaker=CircuitBreakerConfig(enabled=False)
    )
    policy, clock = _policy(config)
    errors = _resets(6)
    operation = Flaky(errors[:])
    with pytest.raises(FatalLoadError) as info:
        policy.call(operation)
    assert str(info.value) == (
        "FATAL: Max retries (5) exceeded. Stopping client to prevent data loss. "
        "Last error: Connection timeout"
    )
    assert info.value.__cause__ is errors[5]
    assert operation.calls == 6
    assert clock.sleeps == [2.0, 4.0, 8.0, 16.0, 32.0]


def test_exhausting_retries_with_all_defaults() -> None:
    # The 5th failure opens the breaker; the 32 s backoff outlasts its 30 s timeout, so the
    # 6th attempt is a half-open probe, which fails too.
    policy, clock = _policy()
    operation = Flaky(_resets(10))
    with pytest.raises(FatalLoadError, match=r"^FATAL: Max retries \(5\) exceeded\. "):
        policy.call(operation)
    assert operation.calls == 6
    assert clock.sleeps == [2.0, 4.0, 8.0, 16.0, 32.0]
    assert policy.breaker.is_open()


def test_retry_disabled_makes_the_first_transient_failure_fatal() -> None:
    config = ResilienceConfig.from_dict({"retry": {"enabled": False}})
    policy, clock = _policy(config)
    error = ConnectionResetError("Connection reset by peer")
    operation = Flaky([error])
    with pytest.raises(FatalLoadError) as info:
        policy.call(operation)
    assert str(info.value).startswith("FATAL: Max retries (0) exceeded.")
    assert info.value.__cause__ is error
    assert operation.calls == 1
    assert clock.sleeps == []


# -- logs --------------------------------------------------------------------------------


def test_retry_and_backoff_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    policy, _ = _policy()
    policy.call(Flaky(_resets(2)))
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == LOGGER]
    assert lines == [
        ("INFO", "Retry attempt 1/5 for transient error: Connection timeout"),
        ("INFO", "Backing off for 2.0 seconds..."),
        ("INFO", "Retry attempt 2/5 for transient error: Connection timeout"),
        ("INFO", "Backing off for 4.0 seconds..."),
    ]


def test_jittered_backoff_log_line_shows_the_slept_delay(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    policy, clock = _policy(ResilienceConfig(), rng=random.Random(5))
    policy.call(Flaky(_resets(1)))
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert messages[1] == f"Backing off for {clock.sleeps[0]:.1f} seconds..."


def test_fatal_errors_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    policy, _ = _policy()
    with pytest.raises(FatalLoadError) as info:
        policy.call(Flaky([HTTPStatusError(401, "invalid credentials")]))
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [str(info.value)]


# -- rate limiter ------------------------------------------------------------------------


def test_429_raises_the_rate_limit_delay_and_success_lowers_it() -> None:
    policy, clock = _policy()
    operation = Flaky([HTTPStatusError(429, "Too Many Requests")])
    assert policy.call(operation) == "loaded"
    # backoff 2 s, then the limiter's 1000 ms before the retry; the success then -10%.
    assert clock.sleeps == [2.0, 1.0]
    assert policy.rate_limiter.get_current_delay() == 900
    assert policy.call(Flaky([])) == "loaded"
    assert clock.sleeps == [2.0, 1.0, 0.9]
    assert policy.rate_limiter.get_current_delay() == 810


def test_timeouts_raise_the_delay_by_the_timeout_rule() -> None:
    policy, clock = _policy()
    operation = Flaky([TimeoutError("timed out"), TimeoutError("timed out")])
    policy.call(operation)
    # 0 -> 500 -> 1250 ms, each waited before the next attempt; then 1250 * 0.9.
    assert clock.sleeps == [2.0, 0.5, 4.0, 1.25]
    assert policy.rate_limiter.get_current_delay() == 1125


def test_a_retry_after_hint_replaces_the_backoff() -> None:
    policy, clock = _policy()
    policy.call(Flaky([HTTPStatusError(429, "slow down", retry_after=7)]))
    assert clock.sleeps == [7.0, 1.0]


def test_policies_share_a_rate_limiter_when_given_one() -> None:
    clock = FakeClock()
    limiter = AdaptiveRateLimiter(clock=clock)
    first = RetryPolicy(NO_JITTER, rate_limiter=limiter, clock=clock)
    second = RetryPolicy(NO_JITTER, rate_limiter=limiter, clock=clock)
    first.call(Flaky([HTTPStatusError(429)]))
    assert second.rate_limiter is limiter
    assert limiter.get_current_delay() == 900


# -- circuit breaker ---------------------------------------------------------------------


def test_breaker_opens_across_calls_then_rejects_fast() -> None:
    # Workers share one breaker; each call here is a worker's batch, retry disabled so each
    # transient failure ends its call.
    clock = FakeClock()
    breaker = CircuitBreaker(clock=clock)
    config = ResilienceConfig.from_dict({"retry": {"enabled": False}})

    def attempt(operation: Callable[[], str]) -> FatalLoadError:
        with pytest.raises(FatalLoadError) as info:
            RetryPolicy(config, breaker=breaker, clock=clock).call(operation)
        return info.value

    for count in range(1, 6):
        attempt(Flaky(_resets(1)))
        assert breaker.consecutive_failures == count
    assert breaker.is_open()
    untouched = Flaky([])
    fatal = attempt(untouched)
    assert untouched.calls == 0  # rejected without being tried
    assert isinstance(fatal.__cause__, CircuitOpenError)
    assert breaker.rejected_calls == 1
    assert clock.sleeps == []  # fast: no waiting at all


def test_breaker_opening_mid_call_waits_for_the_probe_instead_of_calling() -> None:
    config = ResilienceConfig(
        retry=RetryConfig(jitter=False), circuit_breaker=CircuitBreakerConfig(failure_threshold=3)
    )
    policy, clock = _policy(config)
    operation = Flaky(_resets(3))
    assert policy.call(operation) == "loaded"
    # Failures 1-3 (the 3rd opens the breaker, 30 s), a rejection 8 s later that waits the
    # remaining 22 s, then the half-open probe succeeds.
    assert operation.calls == 4
    assert clock.sleeps == pytest.approx([2.0, 4.0, 8.0, 22.0])
    assert policy.breaker.rejected_calls == 1
    assert policy.breaker.state is CircuitState.HALF_OPEN  # 1 of 2 successes
    policy.call(Flaky([]))
    assert policy.breaker.state is CircuitState.CLOSED


def test_permanent_errors_do_not_open_the_breaker() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(clock=clock)
    for _ in range(10):
        with pytest.raises(FatalLoadError):
            RetryPolicy(NO_JITTER, breaker=breaker, clock=clock).call(Flaky([HTTPStatusError(400)]))
    assert breaker.state is CircuitState.CLOSED
    assert breaker.consecutive_failures == 0


def test_breaker_disabled_never_rejects() -> None:
    config = ResilienceConfig(
        retry=RetryConfig(jitter=False, max_retries=20),
        circuit_breaker=CircuitBreakerConfig(enabled=False),
    )
    policy, _ = _policy(config)
    operation = Flaky(_resets(20))
    assert policy.call(operation) == "loaded"
    assert operation.calls == 21
    assert policy.breaker.rejected_calls == 0


# -- retry budgets -----------------------------------------------------------------------


def test_each_call_gets_its_own_retry_budget() -> None:
    # A policy is reused for batch after batch (the pipeline keeps one per destination).
    # A call that ended in FatalLoadError must not leave the next call without retries.
    config = ResilienceConfig(
        retry=RetryConfig(jitter=False, max_retries=2),
        circuit_breaker=CircuitBreakerConfig(enabled=False),
    )
    policy, clock = _policy(config)
    with pytest.raises(FatalLoadError):
        policy.call(Flaky(_resets(3)))
    clock.sleeps.clear()
    operation = Flaky(_resets(1))
    assert policy.call(operation) == "loaded"
    assert operation.calls == 2
    assert clock.sleeps == [2.0]


class ProbeEndingClock(FakeClock):
    """A FakeClock during whose sleeps another worker's probe, started at ``probe_started``
    and taking ``probe_seconds``, finishes with success on ``breaker``."""

    def __init__(self, breaker: CircuitBreaker | None = None, probe_seconds: float = 0.0):
        super().__init__()
        self.breaker = breaker
        self.probe_seconds = probe_seconds
        self.probe_started: float | None = None

    def sleep(self, seconds: float) -> None:
        super().sleep(seconds)
        started = self.probe_started
        if started is not None and self.monotonic() >= started + self.probe_seconds:
            assert self.breaker is not None
            self.breaker.record_success()
            self.probe_started = None


def test_a_busy_half_open_probe_does_not_exhaust_other_workers_retries() -> None:
    # Workers share one breaker. While worker A's probe (a batch load taking 3 s) runs,
    # worker B is rejected with retry_in_seconds=0.1. B must not use up its 5 retries in
    # 0.5 s and stop the client with "Max retries (5) exceeded" before the probe has even
    # finished: the guide promises 5 retries with 2 s-120 s backoff.
    clock = ProbeEndingClock(probe_seconds=3.0)
    breaker = CircuitBreaker(clock=clock)
    clock.breaker = breaker
    for _ in range(5):
        breaker.before_call()
        breaker.record_failure()
    clock.advance(30.0)
    breaker.before_call()  # worker A's probe starts now
    clock.probe_started = clock.monotonic()

    policy = RetryPolicy(NO_JITTER, breaker=breaker, clock=clock)  # worker B
    operation = Flaky([])
    assert policy.call(operation) == "loaded"  # B's batch is the second successful probe
    assert operation.calls == 1
    assert breaker.state is CircuitState.CLOSED
    assert sum(clock.sleeps) >= 3.0
