"""Defect 16 of the loop issue: a call rejected by an open breaker is not an attempt.

Before, each rejection spent a retry, so with ``max_backoff_ms`` below the breaker's
``timeout_ms`` a load ended FATAL before the breaker ever probed, and a breaker shared by
many workers made them fail together instead of waiting together.
"""

from __future__ import annotations

import pytest
from resilience_support import FakeClock

from amp.errors import FatalLoadError, ServerError
from amp.streaming.resilience import (
    CircuitBreakerConfig,
    CircuitState,
    Edge,
    ResilienceConfig,
    RetryConfig,
)


class Flaky:
    """Fails with the given errors in order, then returns "loaded"."""

    def __init__(self, errors: list[BaseException]) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "loaded"


def _unavailable(count: int) -> list[BaseException]:
    return [ServerError("connection refused", "UNAVAILABLE") for _ in range(count)]


SHORT_BACKOFF = ResilienceConfig(
    retry=RetryConfig(jitter=False, max_retries=3, initial_backoff_ms=100, max_backoff_ms=1000),
    circuit_breaker=CircuitBreakerConfig(failure_threshold=2, timeout_ms=30_000),
)


def test_a_rejection_waits_for_the_probe_without_spending_a_retry() -> None:
    clock = FakeClock()
    policy = Edge("destination", SHORT_BACKOFF, clock).policy()
    operation = Flaky(_unavailable(2))  # two failures open the breaker; then it is back
    assert policy.call(operation) == "loaded"
    assert operation.calls == 3
    assert policy.breaker.rejected_calls >= 1
    # 0.1 s and 0.2 s of backoff, then the rest of the breaker's 30 s until its probe.
    assert clock.sleeps[:3] == pytest.approx([0.1, 0.2, 29.8])
    assert sum(clock.sleeps) == pytest.approx(30.1, abs=0.06)
    assert policy.breaker.state is CircuitState.HALF_OPEN


def test_workers_sharing_an_open_breaker_wait_together() -> None:
    clock = FakeClock()
    edge = Edge("destination", SHORT_BACKOFF, clock)
    failing = edge.policy(worker_id=0)
    with pytest.raises(FatalLoadError):
        failing.call(Flaky(_unavailable(10)))  # worker 0 opens the breaker and gives up
    assert edge.breaker.is_open()
    for worker in range(1, 4):  # the others were only rejected: each waits for the probe
        operation = Flaky([])
        assert edge.policy(worker_id=worker).call(operation) == "loaded"
        assert operation.calls == 1
    assert edge.breaker.state is CircuitState.CLOSED


def test_waiting_on_a_breaker_is_bounded_by_the_retry_budget_and_names_the_cause() -> None:
    clock = FakeClock()
    config = ResilienceConfig(
        retry=RetryConfig(jitter=False, max_retries=2, initial_backoff_ms=100, max_backoff_ms=100),
        circuit_breaker=CircuitBreakerConfig(failure_threshold=1, timeout_ms=3_600_000),
    )
    edge = Edge("destination", config, clock)
    with pytest.raises(FatalLoadError):
        edge.policy(0).call(Flaky(_unavailable(10)))
    still_down = Flaky(_unavailable(10))
    with pytest.raises(FatalLoadError) as info:
        edge.policy(1).call(still_down)
    assert still_down.calls == 1  # one probe; the rest of the time was spent waiting
    message = str(info.value)
    assert "circuit breaker stayed open" in message
    assert "connection refused" in message  # the underlying error, not only the breaker


def test_each_worker_has_its_own_rate_limiter_and_the_edges_are_separate() -> None:
    clock = FakeClock()
    server = Edge("server", SHORT_BACKOFF, clock)
    destination = Edge("destination", SHORT_BACKOFF, clock)
    assert server.rate_limiter(0) is not server.rate_limiter(1)
    assert server.policy(1).breaker is server.policy(2).breaker
    with pytest.raises(FatalLoadError):
        server.policy().call(Flaky(_unavailable(10)))
    assert server.breaker.is_open()
    assert not destination.breaker.is_open()
