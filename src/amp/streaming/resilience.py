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

from amp.errors import CircuitOpenError
from amp.streaming._breaker import AdaptiveRateLimiter, CircuitBreaker, CircuitState
from amp.streaming._policy import Edge, RetryPolicy
from amp.streaming._resilience_config import (
    BackPressureConfig,
    CircuitBreakerConfig,
    Clock,
    ExponentialBackoff,
    ResilienceConfig,
    RetryConfig,
    SystemClock,
)
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
    "Edge",
    "ErrorClassifier",
    "ErrorKind",
    "ExponentialBackoff",
    "ResilienceConfig",
    "RetryConfig",
    "RetryPolicy",
    "SystemClock",
]
