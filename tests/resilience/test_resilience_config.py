"""RetryConfig, CircuitBreakerConfig, BackPressureConfig and ResilienceConfig: defaults,
``from_dict`` with the guide's dicts, and validation errors (ConfigError, a ValueError)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from amp.errors import ConfigError
from amp.streaming.resilience import (
    BackPressureConfig,
    CircuitBreakerConfig,
    ResilienceConfig,
    RetryConfig,
)

# The guide's "Custom Resilience Configuration", verbatim (its 'resilience' value).
GUIDE_CUSTOM_RESILIENCE: dict[str, Any] = {
    # Retry configuration
    "retry": {
        "enabled": True,
        "max_retries": 5,  # Try up to 5 times
        "initial_backoff_ms": 2000,  # Start with 2s delay
        "max_backoff_ms": 120000,  # Cap at 2 minutes
        "backoff_multiplier": 2.0,  # Double each retry
        "jitter": True,  # Add randomness to prevent thundering herd
    },
    # Circuit breaker configuration
    "circuit_breaker": {
        "enabled": True,
        "failure_threshold": 10,  # Open after 10 consecutive failures
        "success_threshold": 3,  # Close after 3 consecutive successes
        "timeout_ms": 60000,  # Stay open for 1 minute before testing
    },
    # Adaptive rate limiting configuration
    "back_pressure": {
        "enabled": True,
        "initial_delay_ms": 0,  # No initial delay
        "max_delay_ms": 10000,  # Max 10s delay
        "adapt_on_429": True,  # Slow down on rate limits
        "adapt_on_timeout": True,  # Slow down on timeouts
        "recovery_factor": 0.9,  # Speed up 10% per success
    },
}

# "Disabling Resilience": all of it, and specific features.
GUIDE_DISABLE_ALL: dict[str, Any] = {
    "retry": {"enabled": False},
    "circuit_breaker": {"enabled": False},
    "back_pressure": {"enabled": False},
}
GUIDE_DISABLE_BREAKER: dict[str, Any] = {
    "retry": {"enabled": True},  # Keep retry
    "circuit_breaker": {"enabled": False},  # Disable circuit breaker
    "back_pressure": {"enabled": True},  # Keep rate limiting
}


# -- defaults ----------------------------------------------------------------------------


def test_retry_defaults_are_the_binding_values() -> None:
    assert RetryConfig().to_dict() == {
        "enabled": True,
        "max_retries": 5,
        "initial_backoff_ms": 2000,
        "max_backoff_ms": 120_000,
        "backoff_multiplier": 2.0,
        "jitter": True,
    }


def test_circuit_breaker_defaults_are_the_binding_values() -> None:
    assert CircuitBreakerConfig().to_dict() == {
        "enabled": True,
        "failure_threshold": 5,
        "success_threshold": 2,
        "timeout_ms": 30_000,
        "half_open_max_requests": 1,
    }


def test_back_pressure_defaults_are_the_binding_values() -> None:
    assert BackPressureConfig().to_dict() == {
        "enabled": True,
        "initial_delay_ms": 0,
        "max_delay_ms": 5000,
        "adapt_on_429": True,
        "adapt_on_timeout": True,
        "recovery_factor": 0.9,
    }


def test_resilience_defaults_are_the_section_defaults() -> None:
    config = ResilienceConfig()
    assert config.retry == RetryConfig()
    assert config.circuit_breaker == CircuitBreakerConfig()
    assert config.back_pressure == BackPressureConfig()
    assert ResilienceConfig.from_dict(None) == config
    assert ResilienceConfig.from_dict({}) == config


# -- from_dict ---------------------------------------------------------------------------


def test_resilience_from_dict_with_the_guides_custom_configuration() -> None:
    config = ResilienceConfig.from_dict(GUIDE_CUSTOM_RESILIENCE)
    assert config.retry == RetryConfig(
        enabled=True,
        max_retries=5,
        initial_backoff_ms=2000,
        max_backoff_ms=120000,
        backoff_multiplier=2.0,
        jitter=True,
    )
    # Keys the guide leaves out keep their defaults (half_open_max_requests = 1).
    assert config.circuit_breaker == CircuitBreakerConfig(
        enabled=True, failure_threshold=10, success_threshold=3, timeout_ms=60000
    )
    assert config.circuit_breaker.half_open_max_requests == 1
    assert config.back_pressure == BackPressureConfig(
        enabled=True,
        initial_delay_ms=0,
        max_delay_ms=10000,
        adapt_on_429=True,
        adapt_on_timeout=True,
        recovery_factor=0.9,
    )


def test_section_from_dict_with_the_guides_sections() -> None:
    retry = RetryConfig.from_dict(GUIDE_CUSTOM_RESILIENCE["retry"])
    breaker = CircuitBreakerConfig.from_dict(GUIDE_CUSTOM_RESILIENCE["circuit_breaker"])
    pressure = BackPressureConfig.from_dict(GUIDE_CUSTOM_RESILIENCE["back_pressure"])
    assert retry.to_dict() == GUIDE_CUSTOM_RESILIENCE["retry"]
    assert breaker.to_dict() == {
        **GUIDE_CUSTOM_RESILIENCE["circuit_breaker"],
        "half_open_max_requests": 1,
    }
    assert pressure.to_dict() == GUIDE_CUSTOM_RESILIENCE["back_pressure"]


def test_guide_per_section_option_dicts() -> None:
    # The "Configuration Options" blocks of sections 1-3 (values as printed there).
    retry = RetryConfig.from_dict(
        {
            "enabled": True,
            "max_retries": 3,
            "initial_backoff_ms": 1000,
            "max_backoff_ms": 60000,
            "backoff_multiplier": 2.0,
            "jitter": True,
        }
    )
    assert (retry.max_retries, retry.initial_backoff_ms, retry.max_backoff_ms) == (3, 1000, 60000)
    breaker = CircuitBreakerConfig.from_dict(
        {
            "enabled": True,
            "failure_threshold": 5,
            "success_threshold": 2,
            "timeout_ms": 30000,
            "half_open_max_requests": 1,
        }
    )
    assert breaker == CircuitBreakerConfig()
    pressure = BackPressureConfig.from_dict(
        {
            "enabled": True,
            "initial_delay_ms": 0,
            "max_delay_ms": 5000,
            "adapt_on_429": True,
            "adapt_on_timeout": True,
            "recovery_factor": 0.9,
        }
    )
    assert pressure == BackPressureConfig()


def test_guide_disable_all_and_disable_specific_features() -> None:
    off = ResilienceConfig.from_dict(GUIDE_DISABLE_ALL)
    assert not off.retry.enabled
    assert not off.circuit_breaker.enabled
    assert not off.back_pressure.enabled
    # The other options keep their defaults.
    assert off.retry.max_retries == 5
    assert off.circuit_breaker.failure_threshold == 5

    partial = ResilienceConfig.from_dict(GUIDE_DISABLE_BREAKER)
    assert partial.retry.enabled
    assert not partial.circuit_breaker.enabled
    assert partial.back_pressure.enabled


def test_from_dict_of_none_is_the_default_and_round_trips() -> None:
    for kind in (RetryConfig, CircuitBreakerConfig, BackPressureConfig):
        assert kind.from_dict(None) == kind()
        custom = kind.from_dict({"enabled": False})
        assert kind.from_dict(custom.to_dict()) == custom
        assert kind.from_dict(custom) is custom


def test_configs_are_immutable() -> None:
    config = RetryConfig()
    with pytest.raises(AttributeError):
        config.max_retries = 10  # type: ignore[misc]


# -- validation --------------------------------------------------------------------------


def _config_error(build: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as info:
        build(*args, **kwargs)
    assert isinstance(info.value, ValueError)
    return str(info.value)


@pytest.mark.parametrize(
    ("build", "data", "key", "words"),
    [
        (RetryConfig, {"max_retries": -1}, "max_retries", ">= 0"),
        (RetryConfig, {"backoff_multiplier": 0.5}, "backoff_multiplier", ">= 1"),
        (RetryConfig, {"initial_backoff_ms": -5}, "initial_backoff_ms", ">= 0"),
        (RetryConfig, {"initial_backoff_ms": 5000, "max_backoff_ms": 1000}, "max_backoff_ms", ">="),
        (RetryConfig, {"max_retries": 2.5}, "max_retries", "whole number"),
        (BackPressureConfig, {"recovery_factor": 0}, "recovery_factor", "(0, 1]"),
        (BackPressureConfig, {"recovery_factor": 1.5}, "recovery_factor", "(0, 1]"),
        (BackPressureConfig, {"recovery_factor": -0.1}, "recovery_factor", "(0, 1]"),
        (BackPressureConfig, {"initial_delay_ms": 100, "max_delay_ms": 50}, "max_delay_ms", ">="),
        (BackPressureConfig, {"initial_delay_ms": -1}, "initial_delay_ms", ">= 0"),
        (CircuitBreakerConfig, {"failure_threshold": 0}, "failure_threshold", ">= 1"),
        (CircuitBreakerConfig, {"success_threshold": 0}, "success_threshold", ">= 1"),
        (CircuitBreakerConfig, {"half_open_max_requests": 0}, "half_open_max_requests", ">= 1"),
        (CircuitBreakerConfig, {"timeout_ms": -1}, "timeout_ms", ">= 0"),
        (CircuitBreakerConfig, {"failure_threshold": 2.5}, "failure_threshold", "whole number"),
    ],
)
def test_out_of_range_values_are_config_errors_naming_the_key(
    build: Any, data: dict[str, Any], key: str, words: str
) -> None:
    message = _config_error(build.from_dict, data)
    assert repr(key) in message
    assert words in message
    # The same check applies when built directly.
    assert _config_error(build, **data) == message


@pytest.mark.parametrize(
    ("build", "key", "value", "words"),
    [
        (RetryConfig, "max_retries", "5", "must be a number, got '5'"),
        (RetryConfig, "max_retries", True, "must be a number, got True"),
        (RetryConfig, "initial_backoff_ms", True, "must be a number, got True"),
        (RetryConfig, "backoff_multiplier", None, "must be a number, got None"),
        (RetryConfig, "jitter", "yes", "must be True or False, got 'yes'"),
        (RetryConfig, "enabled", 1, "must be True or False, got 1"),
        (CircuitBreakerConfig, "timeout_ms", "30s", "must be a number, got '30s'"),
        (CircuitBreakerConfig, "failure_threshold", False, "must be a number, got False"),
        (BackPressureConfig, "max_delay_ms", True, "must be a number, got True"),
        (BackPressureConfig, "adapt_on_429", "true", "must be True or False, got 'true'"),
    ],
)
def test_wrong_types_are_config_errors(build: Any, key: str, value: Any, words: str) -> None:
    message = _config_error(build.from_dict, {key: value})
    assert f"[{key!r}]" in message
    assert words in message


@pytest.mark.parametrize(
    ("build", "key", "expected"),
    [
        (RetryConfig, "max_retry", "max_retries"),
        (RetryConfig, "initial_backoff", "initial_backoff_ms"),
        (CircuitBreakerConfig, "failure_treshold", "failure_threshold"),
        (CircuitBreakerConfig, "timeout", "timeout_ms"),
        (BackPressureConfig, "max_delay", "max_delay_ms"),
        (BackPressureConfig, "adapt_on_timeouts", "adapt_on_timeout"),
    ],
)
def test_unknown_key_suggests_the_closest(build: Any, key: str, expected: str) -> None:
    message = _config_error(build.from_dict, {key: 1})
    assert f"unknown key {key!r}" in message
    assert f"did you mean {expected!r}" in message


def test_unknown_key_inside_a_resilience_section() -> None:
    message = _config_error(ResilienceConfig.from_dict, {"retry": {"max_retry": 3}})
    assert "unknown key 'max_retry'" in message
    assert "did you mean 'max_retries'" in message
    assert "resilience['retry']" in message


def test_unknown_section_in_resilience_is_a_config_error() -> None:
    message = _config_error(ResilienceConfig.from_dict, {"retries": {"max_retries": 3}})
    assert "unknown key 'retries'" in message
    assert "did you mean 'retry'" in message
    message = _config_error(ResilienceConfig.from_dict, {"backpressure": {}})
    assert "did you mean 'back_pressure'" in message
    message = _config_error(ResilienceConfig.from_dict, {"checkpoint": {"enabled": True}})
    assert "unknown key 'checkpoint'" in message


def test_a_section_that_is_not_a_dict_is_a_config_error() -> None:
    message = _config_error(ResilienceConfig.from_dict, {"retry": "fast"})
    assert "must be a dict" in message
    assert "str" in message
    assert "must be a dict" in _config_error(ResilienceConfig.from_dict, ["retry"])


def test_boundary_values_are_accepted() -> None:
    assert RetryConfig(max_retries=0).max_retries == 0
    assert RetryConfig(backoff_multiplier=1.0, initial_backoff_ms=0, max_backoff_ms=0).jitter
    assert BackPressureConfig(recovery_factor=1.0).recovery_factor == 1.0
    assert BackPressureConfig(initial_delay_ms=5000).max_delay_ms == 5000
    assert CircuitBreakerConfig(timeout_ms=0, failure_threshold=1).timeout_ms == 0


@pytest.mark.parametrize(
    ("build", "key"),
    [
        (RetryConfig, "initial_backoff_ms"),
        (RetryConfig, "max_backoff_ms"),
        (RetryConfig, "backoff_multiplier"),
        (CircuitBreakerConfig, "timeout_ms"),
        (BackPressureConfig, "max_delay_ms"),
    ],
)
def test_nan_is_rejected(build: Any, key: str) -> None:
    # NaN passes every ``value < minimum`` check (comparisons with NaN are all False): a NaN
    # backoff reaches time.sleep() (ValueError), a NaN timeout_ms keeps the breaker OPEN
    # forever (``elapsed >= nan`` is never true), a NaN max_delay_ms caps nothing.
    message = _config_error(build.from_dict, {key: math.nan})
    assert repr(key) in message
