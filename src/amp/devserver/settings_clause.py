"""The dev server's reading of a query's trailing ``SETTINGS key = value, ...`` clause.

Why its own lexer, separate from the client's (``amp.sqltext``, on sqlglot): the tests
check what the client sends by what the server makes of it; if both read SQL with one
piece of code, a bug in it would pass on both sides. As the real server (protocol §1),
only a clause that ends the top-level statement counts; it may be followed by comments
and a ``;``, and ``SETTINGS`` inside strings, quoted names, comments or parentheses is
not a clause.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Lexeme:
    """One token of the query text: ``kind`` is word, string, quoted, number or symbol."""

    kind: str
    text: str
    start: int


def _skip_quoted(sql: str, position: int, quote: str) -> int:
    """The position after the literal opened at ``position`` (doubled quotes escape)."""
    cursor = position + 1
    while True:
        end = sql.find(quote, cursor)
        if end == -1:
            return len(sql)
        if sql.startswith(quote * 2, end):
            cursor = end + 2
            continue
        return end + 1


def _skip_block_comment(sql: str, position: int) -> int:
    """The position after the ``/* */`` comment opened at ``position`` (they nest)."""
    depth = 0
    cursor = position
    while cursor < len(sql):
        if sql.startswith("/*", cursor):
            depth += 1
            cursor += 2
        elif sql.startswith("*/", cursor):
            depth -= 1
            cursor += 2
            if depth == 0:
                return cursor
        else:
            cursor += 1
    return len(sql)


def lex(sql: str) -> list[Lexeme]:
    """The query's tokens, without whitespace and comments."""
    lexemes: list[Lexeme] = []
    position = 0
    while position < len(sql):
        char = sql[position]
        if char.isspace():
            position += 1
        elif sql.startswith("--", position):
            end = sql.find("\n", position)
            position = len(sql) if end == -1 else end + 1
        elif sql.startswith("/*", position):
            position = _skip_block_comment(sql, position)
        elif char in "'\"`":
            end = _skip_quoted(sql, position, char)
            kind = "string" if char == "'" else "quoted"
            lexemes.append(Lexeme(kind, sql[position:end], position))
            position = end
        elif char.isalnum() or char == "_":
            end = position
            while end < len(sql) and (sql[end].isalnum() or sql[end] in "_."):
                end += 1
            kind = "number" if char.isdigit() else "word"
            lexemes.append(Lexeme(kind, sql[position:end], position))
            position = end
        else:
            lexemes.append(Lexeme("symbol", char, position))
            position += 1
    return lexemes


def _value_start(lexemes: list[Lexeme], end: int) -> int:
    """Index of the first lexeme of the setting value that ends at ``end``."""
    if (
        lexemes[end].kind == "number"
        and end > 0
        and lexemes[end - 1].kind == "symbol"
        and lexemes[end - 1].text in "+-"
    ):
        return end - 1
    return end


def split_settings(sql: str) -> tuple[str, dict[str, str]]:
    """``(query without the clause, {key: value})``; the query unchanged without one.

    Keys are lowercased; values keep their spelling (string literals their quotes).
    A final ``;`` belongs to the statement, not to the clause, and is dropped with it.
    """
    lexemes = lex(sql)
    while lexemes and lexemes[-1].text == ";":
        lexemes.pop()
    settings: dict[str, str] = {}
    position = len(lexemes) - 1
    while position >= 0:
        if lexemes[position].kind not in ("word", "string", "number", "quoted"):
            return sql, {}
        start = _value_start(lexemes, position)
        if start < 3 or lexemes[start - 1].text != "=":
            return sql, {}
        key = lexemes[start - 2]
        if key.kind not in ("word", "quoted"):
            return sql, {}
        name = (key.text.strip('"`') if key.kind == "quoted" else key.text).lower()
        value_end = lexemes[position].start + len(lexemes[position].text)
        settings.setdefault(name, sql[lexemes[start].start : value_end])
        before = lexemes[start - 3]
        if before.text == ",":
            position = start - 4
        elif before.kind == "word" and before.text.upper() == "SETTINGS":
            return sql[: before.start].rstrip(), settings
        else:
            return sql, {}
    return sql, {}


def requests_streaming(settings: dict[str, str]) -> bool:
    """``stream = true`` exactly: the boolean literal, not ``1`` or ``'true'``."""
    return settings.get("stream", "").lower() == "true"
