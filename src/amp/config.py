"""Validation of the dict configurations users pass to amp.

Why strict: a misspelled key silently ignored is a feature silently off (say, a
checkpoint that is never written). Unknown keys are errors that suggest the closest
valid key; values are checked for type and range, with messages that name the key.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

from amp.errors import ConfigError


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
        raise ConfigError(f"{where}[{key!r}] must be {names}, got {value!r}")
    return value


def number_at_least(where: str, key: str, value: Any, minimum: float) -> Any:
    """An int or float ``>= minimum``, else ConfigError."""
    typed(where, key, value, (int, float))
    if value < minimum:
        raise ConfigError(f"{where}[{key!r}] must be >= {minimum}, got {value!r}")
    return value
