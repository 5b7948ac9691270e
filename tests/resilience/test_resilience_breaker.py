"""CircuitBreaker: the guide's flow, counters, guard(), logs, a model-based state machine
and a thread-safety check. Time is a FakeClock; nothing sleeps."""

from __future__ import annotations

import logging
import random
import sys
import threading
from dataclasses import dataclass

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from resilience_support import FakeClock

from amp.errors import AmpError, CircuitOpenError
from amp.streaming.resilience import CircuitBreaker, CircuitBreakerConfig, CircuitState

LOGGER = "amp.streaming.resilience"
OPEN_LINE = "Circuit breaker OPEN after 5 consecutive failures. Rejecting requests for 30000ms."
HALF_OPEN_LINE = "Circuit breaker HALF-OPEN after 30000ms timeout. Testing service recovery..."
CLOSED_LINE = "Circuit breaker CLOSED. Service recovered, resuming normal operation."


def _admitted(breaker: CircuitBreaker) -> bool:
    """``before_call()``: True when admitted, False when rejected with CircuitOpenError."""
    try:
        breaker.before_call()
    except CircuitOpenError:
        return False
    return True


def _fail(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        breaker.before_call()
        breaker.record_failure()


def _opened(clock: FakeClock, config: CircuitBreakerConfig | None = None) -> CircuitBreaker:
    breaker = CircuitBreaker(config, clock)
    _fail(breaker, breaker.config.failure_threshold)
    assert breaker.state is CircuitState.OPEN
    return breaker


# -- the guide's example flow ------------------------------------------------------------


def test_guide_example_flow() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(clock=clock)
    assert breaker.state is CircuitState.CLOSED

    # T0: CLOSED, requests 1-4 fail: still closed.
    for count in range(1, 5):
        assert _admitted(breaker)
        breaker.record_failure()
        assert breaker.consecutive_failures == count
        assert breaker.state is CircuitState.CLOSED
        assert not breaker.is_open()
    # Request 5 fails: the circuit opens.
    assert _admitted(breaker)
    breaker.record_failure()
    assert breaker.state is CircuitState.OPEN
    assert breaker.is_open()
    assert breaker.times_opened == 1

    # T1: OPEN, requests 6 and 7 rejected at once, saying when a probe will be allowed.
    clock.advance(10.0)
    with pytest.raises(CircuitOpenError) as rejected:
        breaker.before_call()
    assert isinstance(rejected.value, AmpError)
    assert rejected.value.retry_in_seconds == pytest.approx(20.0)
    clock.advance(19.5)
    with pytest.raises(CircuitOpenError) as rejected:
        breaker.before_call()
    assert rejected.value.retry_in_seconds == pytest.approx(0.5)
    assert breaker.rejected_calls == 2
    assert breaker.is_open()

    # T2: 30 s after opening: HALF-OPEN.
    clock.advance(0.5)
    assert breaker.state is CircuitState.HALF_OPEN
    assert not breaker.is_open()

    # T3: one probe at a time; 2 successes close the circuit.
    assert _admitted(breaker)
    assert not _admitted(breaker)  # the probe is in flight: half_open_max_requests = 1
    breaker.record_success()
    assert breaker.state is CircuitState.HALF_OPEN  # 1/2
    assert _admitted(breaker)
    breaker.record_success()
    assert breaker.state is CircuitState.CLOSED  # 2/2

    # T4: back to normal.
    assert all(_admitted(breaker) for _ in range(20))
    assert breaker.total_failures == 5
    assert breaker.total_successes == 2
    assert breaker.rejected_calls == 3
    assert breaker.times_opened == 1
    assert breaker.consecutive_failures == 0


def test_open_until_exactly_timeout_ms() -> None:
    clock = FakeClock()
    breaker = _opened(clock)
    clock.advance(29.999)
    assert breaker.is_open()
    assert not _admitted(breaker)
    clock.advance(0.001)
    assert breaker.state is CircuitState.HALF_OPEN
    assert _admitted(breaker)


def test_any_failure_in_half_open_reopens_and_restarts_the_timer() -> None:
    clock = FakeClock()
    breaker = _opened(clock)
    clock.advance(30.0)
    assert _admitted(breaker)
    breaker.record_success()  # 1/2
    assert _admitted(breaker)
    breaker.record_failure()  # still broken
    assert breaker.state is CircuitState.OPEN
    assert breaker.times_opened == 2
    clock.advance(29.0)
    assert not _admitted(breaker)  # a full new timeout, counted from the re-opening
    clock.advance(1.0)
    assert breaker.state is CircuitState.HALF_OPEN
    # The earlier half-open success does not count: two new ones are needed.
    assert _admitted(breaker)
    breaker.record_success()
    assert breaker.state is CircuitState.HALF_OPEN
    assert _admitted(breaker)
    breaker.record_success()
    assert breaker.state is CircuitState.CLOSED


def test_a_success_in_closed_resets_the_consecutive_failure_count() -> None:
    breaker = CircuitBreaker(clock=FakeClock())
    _fail(breaker, 4)
    breaker.before_call()
    breaker.record_success()
    assert breaker.consecutive_failures == 0
    _fail(breaker, 4)
    assert breaker.state is CircuitState.CLOSED  # 4 + 4 failures, but never 5 in a row
    _fail(breaker, 1)
    assert breaker.state is CircuitState.OPEN
    assert breaker.total_failures == 9
    assert breaker.total_successes == 1


def test_half_open_admits_half_open_max_requests_probes_at_a_time() -> None:
    clock = FakeClock()
    config = CircuitBreakerConfig(half_open_max_requests=3, success_threshold=5)
    breaker = _opened(clock, config)
    clock.advance(30.0)
    assert [_admitted(breaker) for _ in range(4)] == [True, True, True, False]
    breaker.record_success()  # a probe finished: one slot free
    assert [_admitted(breaker) for _ in range(2)] == [True, False]
    assert breaker.rejected_calls == 2


def test_half_open_rejection_says_to_retry_shortly() -> None:
    clock = FakeClock()
    breaker = _opened(clock)
    clock.advance(30.0)
    breaker.before_call()
    with pytest.raises(CircuitOpenError) as rejected:
        breaker.before_call()
    assert 0 < rejected.value.retry_in_seconds <= 1.0


def test_custom_thresholds() -> None:
    clock = FakeClock()
    config = CircuitBreakerConfig(failure_threshold=10, success_threshold=3, timeout_ms=60_000)
    breaker = CircuitBreaker(config, clock)
    _fail(breaker, 9)
    assert breaker.state is CircuitState.CLOSED
    _fail(breaker, 1)
    assert breaker.is_open()
    clock.advance(59.0)
    assert breaker.is_open()
    clock.advance(1.0)
    for _ in range(2):
        breaker.before_call()
        breaker.record_success()
        assert breaker.state is CircuitState.HALF_OPEN
    breaker.before_call()
    breaker.record_success()
    assert breaker.state is CircuitState.CLOSED


def test_disabled_breaker_never_opens() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(CircuitBreakerConfig(enabled=False), clock)
    for _ in range(100):
        breaker.before_call()
        breaker.record_failure()
    assert breaker.state is CircuitState.CLOSED
    assert not breaker.is_open()
    assert breaker.times_opened == 0
    assert breaker.rejected_calls == 0
    clock.advance(3600.0)
    assert _admitted(breaker)


# -- guard() -----------------------------------------------------------------------------


def test_guard_records_success_and_failure_and_rejects_when_open() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(CircuitBreakerConfig(failure_threshold=2), clock)
    with breaker.guard():
        pass
    assert breaker.total_successes == 1
    for _ in range(2):
        with pytest.raises(ConnectionResetError), breaker.guard():
            raise ConnectionResetError("reset")
    assert breaker.total_failures == 2
    assert breaker.is_open()
    ran: list[bool] = []
    with pytest.raises(CircuitOpenError), breaker.guard():
        ran.append(True)
    assert ran == []  # the body is not run while open
    assert breaker.rejected_calls == 1
    assert breaker.total_failures == 2  # a rejection is not a failure of the service
    clock.advance(30.0)
    for _ in range(2):
        with breaker.guard():
            ran.append(True)
    assert ran == [True, True]
    assert breaker.state is CircuitState.CLOSED


# -- logging -----------------------------------------------------------------------------


def _lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == LOGGER]


def test_transition_log_lines_are_the_guides_each_once_per_transition(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    clock = FakeClock()
    breaker = CircuitBreaker(clock=clock)
    _fail(breaker, 5)
    assert _lines(caplog) == [("WARNING", OPEN_LINE)]
    # Rejections, state reads and failures reported while open log no more transitions.
    for _ in range(3):
        assert not _admitted(breaker)
        assert breaker.is_open()
    breaker.record_failure()
    clock.advance(30.0)
    assert breaker.state is CircuitState.HALF_OPEN
    assert _lines(caplog) == [("WARNING", OPEN_LINE)]
    assert _admitted(breaker)
    assert not _admitted(breaker)
    breaker.record_success()
    assert _admitted(breaker)
    breaker.record_success()
    for _ in range(3):
        assert _admitted(breaker)
        breaker.record_success()
    assert _lines(caplog) == [
        ("WARNING", OPEN_LINE),
        ("INFO", HALF_OPEN_LINE),
        ("INFO", CLOSED_LINE),
    ]


def test_second_cycle_logs_each_transition_again(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock = FakeClock()
    breaker = CircuitBreaker(clock=clock)
    for _ in range(2):
        _fail(breaker, 5)
        clock.advance(30.0)
        for _ in range(2):
            breaker.before_call()
            breaker.record_success()
    messages = [message for _, message in _lines(caplog)]
    assert messages == [OPEN_LINE, HALF_OPEN_LINE, CLOSED_LINE] * 2


def test_reopening_from_half_open_logs_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock = FakeClock()
    breaker = _opened(clock)
    clock.advance(30.0)
    breaker.before_call()
    breaker.record_failure()
    lines = _lines(caplog)
    assert lines[:2] == [("WARNING", OPEN_LINE), ("INFO", HALF_OPEN_LINE)]
    assert len(lines) == 3
    assert lines[2][0] == "WARNING"
    assert lines[2][1].startswith("Circuit breaker OPEN")
    assert "30000ms" in lines[2][1]


# -- probes in half-open, with calls that started earlier still in flight ----------------


class Worker:
    """A worker thread: ``before_call()`` now, then its outcome when told to finish."""

    def __init__(self, breaker: CircuitBreaker, name: str) -> None:
        self.breaker = breaker
        self.admitted: bool | None = None
        self.started_in: CircuitState | None = None
        self._ready = threading.Event()
        self._finish = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        assert self._ready.wait(10), f"{name} did not start"

    def _run(self) -> None:
        self.started_in = self.breaker.state
        self.admitted = _admitted(self.breaker)
        self._ready.set()
        if self.admitted:
            assert self._finish.wait(10)
            self.breaker.record_success()
        self._done.set()

    def finish(self) -> None:
        """Let the call end (with success) and wait for it; harmless when already done."""
        self._finish.set()
        assert self._done.wait(10), f"{self._thread.name} did not finish"
        self._thread.join(10)


def test_half_open_never_has_more_probes_in_flight_than_allowed() -> None:
    # Workers share one breaker, so a slow call admitted while CLOSED (worker A) can finish
    # while the breaker is HALF-OPEN. With half_open_max_requests = 1, at most one request
    # admitted during HALF-OPEN may be in flight at any moment, whatever A's outcome.
    clock = FakeClock()
    breaker = CircuitBreaker(clock=clock)
    slow = Worker(breaker, "A")  # admitted while CLOSED, still running
    workers = [slow]
    try:
        assert slow.admitted
        _fail(breaker, 5)  # other workers fail: OPEN
        clock.advance(30.0)
        probes: list[Worker] = []
        for name in ("B", "C", "D"):
            worker = Worker(breaker, name)
            workers.append(worker)
            if worker.admitted:
                assert worker.started_in is CircuitState.HALF_OPEN
                probes.append(worker)
            assert len(probes) <= 1, (
                f"{len(probes)} requests admitted in HALF-OPEN are in flight at once "
                "(half_open_max_requests=1)"
            )
            if name == "B":
                slow.finish()  # A's success arrives while B (if admitted) is still probing
    finally:
        for worker in workers:
            worker.finish()


# -- model-based state machine -----------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """An admitted call: ``epoch`` is the half-open period it probes, or None."""

    epoch: int | None


class ReferenceBreaker:
    """The guide's breaker in a few lines, for comparison."""

    def __init__(self, config: CircuitBreakerConfig) -> None:
        self.config = config
        self.mode = CircuitState.CLOSED
        self.opened_at = 0.0
        self.epoch = 0
        self.probes = 0
        self.failures_in_a_row = 0
        self.successes_in_a_row = 0
        self.total_failures = 0
        self.total_successes = 0
        self.rejected = 0
        self.times_opened = 0

    def _timed_out(self, now: float) -> bool:
        return now - self.opened_at >= self.config.timeout_ms / 1000.0

    def state(self, now: float) -> CircuitState:
        if self.mode is CircuitState.OPEN and self._timed_out(now):
            return CircuitState.HALF_OPEN
        return self.mode

    def attempt(self, now: float) -> Call | None:
        if self.mode is CircuitState.CLOSED:
            return Call(None)
        if self.mode is CircuitState.OPEN:
            if not self._timed_out(now):
                self.rejected += 1
                return None
            self.mode = CircuitState.HALF_OPEN
            self.epoch += 1
            self.probes = 0
            self.successes_in_a_row = 0
        if self.probes >= self.config.half_open_max_requests:
            self.rejected += 1
            return None
        self.probes += 1
        return Call(self.epoch)

    def success(self, call: Call) -> None:
        self.total_successes += 1
        self.failures_in_a_row = 0
        if self.mode is CircuitState.HALF_OPEN:
            if call.epoch == self.epoch:
                self.probes -= 1
            self.successes_in_a_row += 1
            if self.successes_in_a_row >= self.config.success_threshold:
                self.mode = CircuitState.CLOSED
                self.successes_in_a_row = 0

    def failure(self, now: float) -> None:
        self.total_failures += 1
        self.failures_in_a_row += 1
        self.successes_in_a_row = 0
        if self.mode is CircuitState.HALF_OPEN or (
            self.mode is CircuitState.CLOSED
            and self.failures_in_a_row >= self.config.failure_threshold
        ):
            self.mode = CircuitState.OPEN
            self.opened_at = now
            self.times_opened += 1


class BreakerMachine(RuleBasedStateMachine):
    """Rules: attempt a call, finish one in flight with success or failure, let time pass."""

    max_in_flight = 1

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.in_flight: list[Call] = []
        self.admitted = 0
        self.breaker = CircuitBreaker(clock=self.clock)
        self.model = ReferenceBreaker(self.breaker.config)
        # Thousands of transitions: keep their log lines out of a failure's report.
        self._log_level = logging.getLogger(LOGGER).level
        logging.getLogger(LOGGER).setLevel(logging.ERROR)

    def teardown(self) -> None:
        logging.getLogger(LOGGER).setLevel(self._log_level)

    @initialize(
        failure_threshold=st.integers(1, 3),
        success_threshold=st.integers(1, 3),
        timeout_s=st.sampled_from([0, 1, 5, 20]),
        half_open_max_requests=st.integers(1, 2),
    )
    def configure(
        self,
        failure_threshold: int,
        success_threshold: int,
        timeout_s: int,
        half_open_max_requests: int,
    ) -> None:
        config = CircuitBreakerConfig(
            failure_threshold=failure_threshold,
            success_threshold=success_threshold,
            timeout_ms=timeout_s * 1000,
            half_open_max_requests=half_open_max_requests,
        )
        self.breaker = CircuitBreaker(config, self.clock)
        self.model = ReferenceBreaker(config)

    @precondition(lambda self: len(self.in_flight) < self.max_in_flight)
    @rule()
    def attempt_a_call(self) -> None:
        now = self.clock.monotonic()
        expected = self.model.attempt(now)
        try:
            self.breaker.before_call()
        except CircuitOpenError as exc:
            assert expected is None, "rejected a call the reference admits"
            assert exc.retry_in_seconds >= 0
            if self.model.mode is CircuitState.OPEN:
                remaining = self.model.config.timeout_ms / 1000.0 - (now - self.model.opened_at)
                assert exc.retry_in_seconds == pytest.approx(remaining)
            return
        assert expected is not None, f"admitted a call the reference rejects ({self.model.mode})"
        self.in_flight.append(expected)
        self.admitted += 1

    @rule(succeeds=st.booleans())
    def quick_call(self, succeeds: bool) -> None:
        """A call admitted and finished at once (the other workers' traffic)."""
        now = self.clock.monotonic()
        expected = self.model.attempt(now)
        try:
            self.breaker.before_call()
        except CircuitOpenError:
            assert expected is None, "rejected a call the reference admits"
            return
        assert expected is not None, f"admitted a call the reference rejects ({self.model.mode})"
        self.admitted += 1
        if succeeds:
            self.breaker.record_success()
            self.model.success(expected)
        else:
            self.breaker.record_failure()
            self.model.failure(now)

    def finishable(self) -> list[int]:
        """Indexes of the calls in flight that may finish now. Left out: a call admitted
        before the current HALF-OPEN period finishing during it. Single-threaded, the
        breaker cannot tell it from a probe (see the worker-thread test above)."""
        if self.model.mode is not CircuitState.HALF_OPEN:
            return list(range(len(self.in_flight)))
        return [i for i, call in enumerate(self.in_flight) if call.epoch == self.model.epoch]

    @precondition(lambda self: bool(self.finishable()))
    @rule(data=st.data())
    def success(self, data: st.DataObject) -> None:
        index = data.draw(st.sampled_from(self.finishable()), label="call")
        call = self.in_flight.pop(index)
        self.breaker.record_success()
        self.model.success(call)

    @precondition(lambda self: bool(self.finishable()))
    @rule(data=st.data())
    def failure(self, data: st.DataObject) -> None:
        index = data.draw(st.sampled_from(self.finishable()), label="call")
        self.in_flight.pop(index)
        self.breaker.record_failure()
        self.model.failure(self.clock.monotonic())

    @rule(seconds=st.sampled_from([0.5, 1.0, 5.0, 30.0]))
    def advance_time(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @invariant()
    def agrees_with_the_reference(self) -> None:
        now = self.clock.monotonic()
        expected = self.model.state(now)
        assert self.breaker.state is expected
        assert self.breaker.is_open() == (expected is CircuitState.OPEN)
        assert self.breaker.total_failures == self.model.total_failures
        assert self.breaker.total_successes == self.model.total_successes
        assert self.breaker.rejected_calls == self.model.rejected
        assert self.breaker.times_opened == self.model.times_opened
        assert self.breaker.consecutive_failures == self.model.failures_in_a_row

    @invariant()
    def every_admitted_call_is_accounted_for(self) -> None:
        finished = self.breaker.total_failures + self.breaker.total_successes
        assert finished + len(self.in_flight) == self.admitted


class ConcurrentBreakerMachine(BreakerMachine):
    """Several calls in flight at once, as with workers sharing one breaker."""

    max_in_flight = 3


TestBreakerAgainstReference = BreakerMachine.TestCase
TestBreakerAgainstReference.settings = settings(
    max_examples=300, stateful_step_count=40, deadline=None, database=None, derandomize=True
)
TestConcurrentBreakerAgainstReference = ConcurrentBreakerMachine.TestCase
TestConcurrentBreakerAgainstReference.settings = settings(
    max_examples=300, stateful_step_count=30, deadline=None, database=None, derandomize=True
)


# -- threads -----------------------------------------------------------------------------


def test_threads_hammering_one_breaker_account_for_every_call() -> None:
    clock = FakeClock()
    config = CircuitBreakerConfig(
        failure_threshold=3, success_threshold=2, timeout_ms=5000, half_open_max_requests=2
    )
    breaker = CircuitBreaker(config, clock)
    threads, iterations = 8, 3000
    barrier = threading.Barrier(threads)
    tallies: dict[int, tuple[int, int, int]] = {}

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        successes = failures = rejected = 0
        barrier.wait()
        for _ in range(iterations):
            if rng.random() < 0.05:
                clock.advance(1.0)
            try:
                breaker.before_call()
            except CircuitOpenError:
                rejected += 1
                continue
            if rng.random() < 0.4:
                breaker.record_failure()
                failures += 1
            else:
                breaker.record_success()
                successes += 1
        tallies[seed] = (successes, failures, rejected)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        pool = [threading.Thread(target=worker, args=(seed,)) for seed in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
    finally:
        sys.setswitchinterval(interval)

    assert len(tallies) == threads
    successes = sum(t[0] for t in tallies.values())
    failures = sum(t[1] for t in tallies.values())
    rejected = sum(t[2] for t in tallies.values())
    assert successes + failures + rejected == threads * iterations
    assert breaker.total_successes == successes
    assert breaker.total_failures == failures
    assert breaker.rejected_calls == rejected
    assert breaker.times_opened > 0  # the run went through the transitions
    # No probe slot leaked: with nothing in flight, the breaker can still recover.
    clock.advance(10.0)
    for _ in range(config.success_threshold):
        assert _admitted(breaker)
        breaker.record_success()
    assert breaker.state is CircuitState.CLOSED
