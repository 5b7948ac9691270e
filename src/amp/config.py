"""Validation of the dict configurations users pass to amp.

Why strict: a misspelled key silently ignored is a feature silently off (say, a
checkpoint that is never written). Unknown keys are errors that suggest the closest
valid key; values are checked for type and range, with messages that name the key.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping
from typing import Any

from amp.errors import ConfigError
from amp.redact import redact_value


def suggest(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_keys(where: str, config: Mapping[str, Any], allowed: Iterable[str]) -> None:
    """ConfigError for the first key of ``config`` not in ``allowed``."""
    if not isinstance(config, Mapping):
        raise ConfigError(f"{where} must be a dict, got {type(config).__name__}")
    allowed = sorted(allowed)
    for key in config:
        if key not in allowed:
            raise ConfigError(
                f"unknown key {key!r} in {where}{suggest(str(key), allowed)}; "
                f"valid keys: {', '.join(allowed)}"
            )


def typed(where: str, key: str, value: Any, kinds: type | tuple[type, ...]) -> Any:
    """``value`` if it is of ``kinds`` (bool is not an int here), else ConfigError."""
    kinds_tuple = kinds if isinstance(kinds, tuple) else (kinds,)
    is_bool = isinstance(value, bool)
    if (is_bool and bool not in kinds_tuple) or not isinstance(value, kinds_tuple):
        names = " or ".join(kind.__name__ for kind in kinds_tuple)
        raise ConfigError(f"{where}[{key!r}] must be {names}, got {redact_value(key, value)}")
    return value


def number_at_least(where: str, key: str, value: Any, minimum: float) -> Any:
    """A finite int or float ``>= minimum``, else ConfigError (NaN passes every
    comparison, so it is refused by name)."""
    typed(where, key, value, (int, float))
    if not math.isfinite(value):
        raise ConfigError(f"{where}[{key!r}] must be a finite number, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{where}[{key!r}] must be >= {minimum}, got {redact_value(key, value)}")
    return value


def number_at_most(where: str, key: str, value: Any, maximum: float, why: str = "") -> Any:
    """``value`` when ``<= maximum``, else ConfigError; ``why`` explains the bound."""
    if value > maximum:
        reason = f" ({why})" if why else ""
        raise ConfigError(f"{where}[{key!r}] must be <= {maximum}{reason}, got {value!r}")
    return value


def port_number(where: str, key: str, value: Any) -> int:
    """A TCP port, 1..65535: anything else fails to connect or hangs mid-load."""
    typed(where, key, value, int)
    if not 1 <= value <= 65535:
        raise ConfigError(f"{where}[{key!r}] must be a TCP port from 1 to 65535, got {value!r}")
    return int(value)


ONE_DAY_SECONDS = 86_400


def timeout_seconds(where: str, key: str, value: Any) -> float:
    """A wait bound: a finite number of seconds, more than 0 and at most a day.

    Why more than 0: to libpq, redis-py and socket options 0 means "no deadline", the
    very hang a timeout is set to prevent; a fraction is kept as it is (never truncated
    to 0 by ``int``)."""
    number_at_least(where, key, value, 0)
    if value <= 0:
        raise ConfigError(
            f"{where}[{key!r}] must be more than 0 seconds (0 would mean waiting forever), "
            f"got {value!r}"
        )
    number_at_most(where, key, value, ONE_DAY_SECONDS, "one day, in seconds")
    return float(value)
