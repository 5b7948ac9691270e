"""Resilience settings (the guide's keys, validated at configure time), the clock, and
the backoff schedule they imply. Re-exported by ``amp.streaming.resilience``."""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

from amp.config import check_keys
from amp.errors import ConfigError


class Clock(Protocol):
    """Where resilience reads time and waits: the system's, or a test's."""

    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...

    def wait(self, seconds: float, stop: threading.Event) -> None:
        """Sleep, but return as soon as ``stop`` is set."""
        ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    def wait(self, seconds: float, stop: threading.Event) -> None:
        if seconds > 0:
            stop.wait(seconds)


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


# Upper bounds: a wait past a day is a misconfiguration, and far larger values overflow
# time.sleep() (OverflowError) in the middle of a load instead of failing here.
_MAX_WAIT_MS = 86_400_000
_MAX_MULTIPLIER = 100.0


def _at_most_a_day(where: str, *names_and_values: tuple[str, float]) -> None:
    for name, value in names_and_values:
        if value > _MAX_WAIT_MS:
            raise ConfigError(
                f"{where}[{name!r}] must be <= {_MAX_WAIT_MS} (one day in milliseconds), "
                f"got {value!r}"
            )


def _whole(where: str, name: str, value: object, minimum: int) -> None:
    """A count: an int (not a float such as 2.0, which would mean a fraction of a try)."""
    if not isinstance(value, int):
        raise ConfigError(f"{where}[{name!r}] must be a whole number")
    _at_least(where, name, value, minimum)


def _delay_bounds(where: str, first: tuple[str, float], most: tuple[str, float]) -> None:
    """A delay that starts at ``first`` and grows up to ``most``: both in 0..a day, in order."""
    _at_least(where, first[0], first[1], 0)
    _at_most_a_day(where, first, most)
    _at_least(where, most[0], most[1], first[1])


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
        _whole(where, "max_retries", self.max_retries, 0)
        _delay_bounds(
            where,
            ("initial_backoff_ms", self.initial_backoff_ms),
            ("max_backoff_ms", self.max_backoff_ms),
        )
        if self.backoff_multiplier > _MAX_MULTIPLIER:
            raise ConfigError(
                f"{where}['backoff_multiplier'] must be <= {_MAX_MULTIPLIER:g} (2 doubles "
                f"each delay), got {self.backoff_multiplier!r}"
            )
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
            _whole(where, name, getattr(self, name), 1)
        _at_least(where, "timeout_ms", self.timeout_ms, 0)
        _at_most_a_day(where, ("timeout_ms", self.timeout_ms))


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
        _delay_bounds(
            where,
            ("initial_delay_ms", self.initial_delay_ms),
            ("max_delay_ms", self.max_delay_ms),
        )
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
