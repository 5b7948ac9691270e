"""The trailing ``SETTINGS key = value, ...`` clause of an Amp SQL query.

Why a scanner and not a regex over the whole text: ``SETTINGS`` may appear inside a
string literal, a comment or a subquery; only a clause at the end of the top-level
statement counts (protocol §1). Both the client (to append ``SETTINGS stream = true``
only when the query lacks a clause) and the dev server (to detect streaming) use it.
"""

from __future__ import annotations

import re

_PAIR = r"[A-Za-z_][A-Za-z0-9_]*\s*=\s*(?:'(?:[^']|'')*'|[^\s,;']+)"
_TAIL = re.compile(rf"\s+(?P<pairs>{_PAIR}(?:\s*,\s*{_PAIR})*)\s*;?\s*$", re.DOTALL)
_ONE_PAIR = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*=\s*('(?:[^']|'')*'|[^\s,;']+)")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _top_level_words(sql: str) -> list[tuple[int, str]]:
    """``(position, word)`` for every identifier-like word outside strings and comments,
    and ``(position, ';')`` for every statement terminator outside them."""
    words: list[tuple[int, str]] = []
    position = 0
    depth = 0
    length = len(sql)
    while position < length:
        char = sql[position]
        if char in "'\"`":
            end = sql.find(char, position + 1)
            while end != -1 and end + 1 < length and sql[end + 1] == char:
                end = sql.find(char, end + 2)
            position = length if end == -1 else end + 1
        elif sql.startswith("--", position):
            end = sql.find("\n", position)
            position = length if end == -1 else end + 1
        elif sql.startswith("/*", position):
            end = sql.find("*/", position + 2)
            position = length if end == -1 else end + 2
        elif char == "(":
            depth += 1
            position += 1
        elif char == ")":
            depth -= 1
            position += 1
        elif char == ";" and depth == 0:
            words.append((position, ";"))
            position += 1
        elif char.isalpha() or char == "_":
            match = _WORD.match(sql, position)
            assert match is not None
            if depth == 0:
                words.append((position, match.group()))
            position = match.end()
        else:
            position += 1
    return words


def split_settings(sql: str) -> tuple[str, dict[str, str]]:
    """Split off a trailing top-level SETTINGS clause: ``(query, {key: value})``.

    Keys are lowercased (they match case-insensitively); values keep their spelling,
    string literals keep their quotes. Without a clause the query comes back unchanged.
    """
    for position, word in reversed(_top_level_words(sql)):
        if word == ";":
            continue
        if word.upper() != "SETTINGS":
            continue
        tail = _TAIL.match(sql, position + len(word))
        if tail is None:
            return sql, {}
        settings = {key.lower(): value for key, value in _ONE_PAIR.findall(tail.group("pairs"))}
        return sql[:position].rstrip(), settings
    return sql, {}


def with_streaming(sql: str) -> str:
    """``sql`` with ``SETTINGS stream = true`` appended, on its own line (a trailing
    ``--`` comment cannot swallow it) and before nothing but a dropped final ``;``."""
    tokens = _top_level_words(sql)
    body = sql[: tokens[-1][0]] if tokens and tokens[-1][1] == ";" else sql
    return f"{body.rstrip()}\nSETTINGS stream = true"


def has_settings(sql: str) -> bool:
    """True when the query already ends with a SETTINGS clause (of any keys)."""
    return split_settings(sql)[0] != sql


def requests_streaming(settings: dict[str, str]) -> bool:
    """``stream = true`` exactly: the boolean literal, not ``1`` or ``'true'``."""
    return settings.get("stream", "").lower() == "true"
