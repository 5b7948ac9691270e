"""AdaptiveRateLimiter: the guide's sequences, the cap, wait() through the clock."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from resilience_support import FakeClock

from amp.streaming.resilience import AdaptiveRateLimiter, BackPressureConfig

GUIDE_CUSTOM = BackPressureConfig(max_delay_ms=10_000)  # the guide's "Max 10s delay"


def _limiter(config: BackPressureConfig | None = None) -> tuple[AdaptiveRateLimiter, FakeClock]:
    clock = FakeClock()
    return AdaptiveRateLimiter(config, clock), clock


def test_starts_at_initial_delay_zero() -> None:
    limiter, clock = _limiter()
    assert limiter.get_current_delay() == 0
    limiter.wait()
    assert clock.sleeps == []


def test_429_sequence_0_1000_3000_7000() -> None:
    limiter, _ = _limiter(GUIDE_CUSTOM)
    seen = [limiter.get_current_delay()]
    for _ in range(3):
        limiter.record_rate_limit()
        seen.append(limiter.get_current_delay())
    assert seen == [0, 1000, 3000, 7000]


def test_timeout_sequence_0_500_1250_2375() -> None:
    limiter, _ = _limiter()
    seen = [limiter.get_current_delay()]
    for _ in range(3):
        limiter.record_timeout()
        seen.append(limiter.get_current_delay())
    assert seen == [0, 500, 1250, 2375]


def test_success_sequence_from_5000_4500_4050_3645_down_to_zero() -> None:
    limiter, _ = _limiter(BackPressureConfig(initial_delay_ms=5000))
    assert limiter.get_current_delay() == 5000
    seen = []
    for _ in range(3):
        limiter.record_success()
        seen.append(limiter.get_current_delay())
    assert seen == [4500, 4050, 3645]
    for _ in range(200):
        limiter.record_success()
        if limiter.get_current_delay() == 0:
            break
    assert limiter.get_current_delay() == 0  # no floor: back to full speed


def test_guide_scenario_hit_rate_limit() -> None:
    # "Scenario 1: Hit rate limit": 429, wait 1000ms, 429, wait 3000ms, success -> 2700ms.
    limiter, clock = _limiter(GUIDE_CUSTOM)
    limiter.record_rate_limit()
    limiter.wait()
    limiter.record_rate_limit()
    limiter.wait()
    limiter.record_success()
    assert clock.sleeps == [1.0, 3.0]
    assert limiter.get_current_delay() == 2700


def test_delay_is_capped_at_max_delay_ms() -> None:
    limiter, _ = _limiter()  # default cap 5000 ms
    for _ in range(3):
        limiter.record_rate_limit()
    assert limiter.get_current_delay() == 5000  # 7000 capped
    limiter.record_rate_limit()
    limiter.record_timeout()
    assert limiter.get_current_delay() == 5000
    limiter, _ = _limiter(BackPressureConfig(max_delay_ms=2000))
    for _ in range(10):
        limiter.record_timeout()
    assert limiter.get_current_delay() == 2000


def test_get_current_delay_is_whole_milliseconds() -> None:
    limiter, _ = _limiter(BackPressureConfig(initial_delay_ms=3645))
    limiter.record_success()  # 3280.5 ms
    delay = limiter.get_current_delay()
    assert type(delay) is int
    assert delay == 3280


def test_wait_sleeps_exactly_the_current_delay_through_the_clock() -> None:
    limiter, clock = _limiter(GUIDE_CUSTOM)
    limiter.wait()
    assert clock.sleeps == []  # nothing at all at 0
    limiter.record_rate_limit()
    limiter.wait()
    limiter.record_timeout()  # 1000 * 1.5 + 500 = 2000
    limiter.wait()
    limiter.record_success()  # 1800
    limiter.wait()
    assert clock.sleeps == [1.0, 2.0, 1.8]
    assert clock.monotonic() == 1000.0 + 4.8


def test_adapt_on_429_false_ignores_rate_limits() -> None:
    limiter, clock = _limiter(BackPressureConfig(adapt_on_429=False))
    for _ in range(5):
        limiter.record_rate_limit()
    assert limiter.get_current_delay() == 0
    limiter.record_timeout()  # timeouts still adapt
    assert limiter.get_current_delay() == 500
    limiter.wait()
    assert clock.sleeps == [0.5]


def test_adapt_on_timeout_false_ignores_timeouts() -> None:
    limiter, _ = _limiter(BackPressureConfig(adapt_on_timeout=False))
    for _ in range(5):
        limiter.record_timeout()
    assert limiter.get_current_delay() == 0
    limiter.record_rate_limit()  # 429s still adapt
    assert limiter.get_current_delay() == 1000


def test_disabled_keeps_the_delay_at_zero() -> None:
    limiter, clock = _limiter(BackPressureConfig(enabled=False, initial_delay_ms=3000))
    assert limiter.get_current_delay() == 0
    for _ in range(5):
        limiter.record_rate_limit()
        limiter.record_timeout()
        limiter.record_success()
        limiter.wait()
    assert limiter.get_current_delay() == 0
    assert clock.sleeps == []


def test_recovery_factor_one_never_speeds_up() -> None:
    limiter, _ = _limiter(BackPressureConfig(recovery_factor=1.0))
    limiter.record_rate_limit()
    for _ in range(50):
        limiter.record_success()
    assert limiter.get_current_delay() == 1000


@settings(max_examples=200, deadline=None, database=None, derandomize=True)
@given(
    events=st.lists(st.sampled_from(["429", "timeout", "success"]), max_size=60),
    cap=st.integers(0, 20_000),
    factor=st.floats(0.05, 1.0, allow_nan=False),
)
def test_delay_follows_the_rules_for_any_event_sequence(
    events: list[str], cap: int, factor: float
) -> None:
    config = BackPressureConfig(max_delay_ms=cap, recovery_factor=factor)
    limiter, clock = _limiter(config)
    expected = 0.0
    for event in events:
        if event == "429":
            limiter.record_rate_limit()
            expected = min(expected * 2 + 1000, cap)
        elif event == "timeout":
            limiter.record_timeout()
            expected = min(expected * 1.5 + 500, cap)
        else:
            limiter.record_success()
            expected *= factor
            if expected < 1.0:
                expected = 0.0
        delay = limiter.get_current_delay()
        assert 0 <= delay <= cap
        assert abs(delay - expected) <= 1
    clock.sleeps.clear()
    limiter.wait()
    if expected == 0:
        assert clock.sleeps == []
    else:
        assert len(clock.sleeps) == 1
        assert abs(clock.sleeps[0] * 1000 - expected) < 1e-6 * max(expected, 1)
