"""``amp load --option KEY=VALUE``: any config key of the chosen loader.

Why JSON first: the Python config has typed values (``port`` is an int, ``producer_config``
a dict), so ``port=5433`` must arrive as the int 5433 and ``producer_config={"acks": "all"}``
as a dict; a value that is not JSON (``schema=analytics``) is kept as the string it is
(``'"5433"'`` is the string ``5433``). The key and the typed value are then checked by
``configure_connection`` like any Python config: an unknown key names the closest valid
one, a wrong type names the key. An option replaces what the ``--to`` URL or another flag
set for the same key (a whole value: ``producer_config`` replaces the URL's, not merged).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Mapping
from typing import Any


def _no_constants(name: str) -> Any:
    raise ValueError(name)  # NaN and Infinity stay strings, not floats


def parse_value(text: str) -> Any:
    """``text`` as JSON when it parses as JSON, else the string itself."""
    try:
        return json.loads(text, parse_constant=_no_constants)
    except ValueError:
        return text


def option_pair(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` → (key, typed value); argparse reports a malformed one (exit 2).
    The value is never echoed: it may be a password."""
    key, equals, value = text.partition("=")
    key = key.strip()
    if not equals or not key:
        raise argparse.ArgumentTypeError(
            "expected KEY=VALUE, e.g. --option schema=analytics or --option port=5433"
        )
    return key, parse_value(value)


def add_option_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--option",
        dest="options",
        action="append",
        type=option_pair,
        default=[],
        metavar="KEY=VALUE",
        help="a config key of the destination's loader (repeatable); VALUE is read as JSON "
        'when it parses (5433, true, {"acks": "all"}), else kept as a string; it '
        "replaces what --to set for that key",
    )


def with_options(config: Mapping[str, Any], options: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """``config`` with each option's key set to its value (a later one wins)."""
    merged = dict(config)
    merged.update(options)
    return merged
