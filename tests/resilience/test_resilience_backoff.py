"""ExponentialBackoff: exact delays, the cap, jitter bounds, exhaustion, reset, hints."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amp.streaming.resilience import ExponentialBackoff, RetryConfig

PROPERTY = settings(
    max_examples=300,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


def _delays(backoff: ExponentialBackoff, limit: int = 10_000) -> list[float]:
    """Every delay until the first None (at most ``limit``)."""
    out: list[float] = []
    for _ in range(limit):
        delay = backoff.next_delay()
        if delay is None:
            return out
        out.append(delay)
    raise AssertionError(f"next_delay() still returned delays after {limit} calls")


def test_default_delays_without_jitter_are_2_4_8_16_32_seconds_then_none() -> None:
    backoff = ExponentialBackoff(RetryConfig(jitter=False))
    assert [backoff.next_delay() for _ in range(5)] == [2.0, 4.0, 8.0, 16.0, 32.0]
    assert backoff.next_delay() is None
    assert backoff.next_delay() is None  # stays exhausted


def test_base_delay_is_initial_times_multiplier_power_in_seconds() -> None:
    backoff = ExponentialBackoff(RetryConfig(initial_backoff_ms=1000, backoff_multiplier=3.0))
    assert [backoff.base_delay(n) for n in range(4)] == [1.0, 3.0, 9.0, 27.0]


def test_delays_are_capped_at_max_backoff_ms() -> None:
    config = RetryConfig(
        max_retries=6, initial_backoff_ms=50_000, max_backoff_ms=120_000, jitter=False
    )
    assert _delays(ExponentialBackoff(config)) == [50.0, 100.0, 120.0, 120.0, 120.0, 120.0]


def test_ten_retries_reach_the_two_minute_cap() -> None:
    config = RetryConfig(max_retries=10, jitter=False)
    delays = _delays(ExponentialBackoff(config))
    assert delays == [2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 120.0, 120.0, 120.0, 120.0]


def test_max_retries_zero_gives_no_delay_at_all() -> None:
    assert ExponentialBackoff(RetryConfig(max_retries=0)).next_delay() is None


def test_disabled_retry_returns_none_at_once() -> None:
    backoff = ExponentialBackoff(RetryConfig(enabled=False), random.Random(1))
    assert backoff.next_delay() is None
    assert backoff.next_delay(hint_seconds=3.0) is None


def test_reset_starts_the_sequence_over() -> None:
    backoff = ExponentialBackoff(RetryConfig(jitter=False))
    assert _delays(backoff) == [2.0, 4.0, 8.0, 16.0, 32.0]
    backoff.reset()
    assert backoff.next_delay() == 2.0
    assert backoff.next_delay() == 4.0
    backoff.reset()
    assert _delays(backoff) == [2.0, 4.0, 8.0, 16.0, 32.0]


def test_retry_after_hint_replaces_the_computed_delay() -> None:
    backoff = ExponentialBackoff(RetryConfig(), random.Random(7))  # jitter on
    assert backoff.next_delay(hint_seconds=7.0) == 7.0  # no jitter applied to a hint
    assert backoff.next_delay(hint_seconds=0.0) == 0.0
    # A hint is capped at max_backoff_ms, and counts as one of the retries.
    assert backoff.next_delay(hint_seconds=3600.0) == 120.0
    assert backoff.attempt == 3
    assert len(_delays(backoff)) == 2


def test_jitter_spreads_delays_over_50_to_150_percent() -> None:
    rng = random.Random(12345)
    samples: list[float] = []
    for _ in range(2000):
        backoff = ExponentialBackoff(RetryConfig(), rng)
        delay = backoff.next_delay()
        assert delay is not None
        samples.append(delay)
    assert all(1.0 <= d <= 3.0 for d in samples)
    # Both ends of the range are reached (not a constant, not only +/- a little).
    assert min(samples) < 1.05
    assert max(samples) > 2.95
    assert len(set(samples)) > 1900


def test_same_seed_same_delays() -> None:
    first = _delays(ExponentialBackoff(RetryConfig(), random.Random(99)))
    second = _delays(ExponentialBackoff(RetryConfig(), random.Random(99)))
    other = _delays(ExponentialBackoff(RetryConfig(), random.Random(100)))
    assert first == second
    assert first != other


def test_base_delay_far_past_the_cap_is_the_cap() -> None:
    # max_retries has no upper bound: a long-running stream may allow, say, 10 000 retries
    # (each capped at 2 min, about two weeks in all). 2.0 ** 1024 overflows a float, so
    # base_delay() must cap before it overflows instead of raising OverflowError.
    config = RetryConfig(max_retries=10_000, jitter=False)
    backoff = ExponentialBackoff(config)
    assert backoff.base_delay(1100) == 120.0
    backoff.attempt = 1100
    assert backoff.next_delay() == 120.0


# -- properties -------------------------------------------------------------------------


@st.composite
def retry_configs(draw: st.DrawFn, jitter: bool | None = None) -> RetryConfig:
    initial = draw(st.integers(0, 1_000_000) | st.floats(0, 1_000_000, allow_nan=False))
    extra = draw(st.integers(0, 10_000_000) | st.floats(0, 10_000_000, allow_nan=False))
    return RetryConfig(
        max_retries=draw(st.integers(0, 40)),
        initial_backoff_ms=initial,
        max_backoff_ms=initial + extra,
        backoff_multiplier=draw(st.floats(1.0, 10.0, allow_nan=False)),
        jitter=draw(st.booleans()) if jitter is None else jitter,
    )


@PROPERTY
@given(config=retry_configs(jitter=True), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_jittered_delay_is_within_half_and_one_and_a_half_of_computed_and_capped(
    config: RetryConfig, seed: int, data: st.DataObject
) -> None:
    if config.max_retries == 0:
        assert ExponentialBackoff(config, random.Random(seed)).next_delay() is None
        return
    attempt = data.draw(st.integers(0, config.max_retries - 1), label="attempt")
    backoff = ExponentialBackoff(config, random.Random(seed))
    backoff.attempt = attempt
    uncapped_ms = config.initial_backoff_ms * config.backoff_multiplier**attempt
    computed = min(uncapped_ms, config.max_backoff_ms) / 1000.0
    assert backoff.base_delay(attempt) == pytest.approx(computed, rel=1e-9)
    delay = backoff.next_delay()
    assert delay is not None
    tolerance = 1e-9 * max(computed, 1.0)
    assert 0.5 * computed - tolerance <= delay <= 1.5 * computed + tolerance
    assert delay <= config.max_backoff_ms / 1000.0
    assert delay >= 0.0


@PROPERTY
@given(config=retry_configs(), seed=st.integers(0, 2**32 - 1))
def test_exactly_max_retries_delays_then_none_and_reset_starts_over(
    config: RetryConfig, seed: int
) -> None:
    backoff = ExponentialBackoff(config, random.Random(seed))
    first = _delays(backoff, limit=config.max_retries + 5)
    assert len(first) == config.max_retries
    assert backoff.next_delay() is None
    backoff.reset()
    second = _delays(backoff, limit=config.max_retries + 5)
    assert len(second) == config.max_retries
    if not config.jitter:
        assert first == second
        assert first == [backoff.base_delay(n) for n in range(config.max_retries)]
        assert first == sorted(first)  # never shrinks without jitter


@PROPERTY
@given(
    config=retry_configs(),
    hint=st.floats(0, 1e7, allow_nan=False),
    seed=st.integers(0, 2**32 - 1),
)
def test_hint_replaces_the_delay_and_is_capped(config: RetryConfig, hint: float, seed: int) -> None:
    backoff = ExponentialBackoff(config, random.Random(seed))
    delay = backoff.next_delay(hint_seconds=hint)
    if config.max_retries == 0:
        assert delay is None
    else:
        assert delay == min(hint, config.max_backoff_ms / 1000.0)
        assert backoff.attempt == 1
