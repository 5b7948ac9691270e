"""The client's reading of a query's trailing ``SETTINGS key = value, ...`` clause.

Why a real tokenizer (sqlglot's): ``SETTINGS`` may appear inside a string literal, a
quoted identifier, a comment or a subquery, and a clause may be followed by comments or
a ``;``; only a clause that ends the top-level statement counts (protocol §1). The
client uses this to append ``SETTINGS stream = true`` only when the query has no clause.
The dev server reads the clause with its own, separate code
(``amp.devserver.settings_clause``), so that a bug here cannot hide one there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import sqlglot
import sqlglot.errors
from sqlglot import exp
from sqlglot.errors import TokenError
from sqlglot.tokens import Token, Tokenizer, TokenType

from amp.errors import ConfigError

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class SettingsClause:
    """A trailing SETTINGS clause: keys lowercased, values as written (strings quoted);
    ``stream`` says whether it holds
    ``stream = true`` with the boolean literal (``1`` or ``'true'`` do not stream)."""

    settings: dict[str, str]
    stream: bool


def _tokens(sql: str) -> list[Token]:
    try:
        return Tokenizer().tokenize(sql)
    except TokenError as exc:
        raise ConfigError(f"the query cannot be read as SQL: {exc}") from None


def _statement_tokens(tokens: list[Token]) -> list[Token]:
    """The tokens before the final ``;`` (and the comments after it), if any."""
    end = len(tokens)
    while end and tokens[end - 1].token_type is TokenType.SEMICOLON:
        end -= 1
    return tokens[:end]


def _is_key(token: Token) -> bool:
    return token.token_type is TokenType.IDENTIFIER or bool(_NAME.fullmatch(token.text))


def _value_start(tokens: list[Token], end: int) -> int | None:
    """Index of the first token of the value ending at ``tokens[end]``, or None."""
    token = tokens[end]
    if token.token_type in (TokenType.STRING, TokenType.NUMBER, TokenType.TRUE, TokenType.FALSE):
        if (
            token.token_type is TokenType.NUMBER
            and end > 0
            and tokens[end - 1].token_type in (TokenType.DASH, TokenType.PLUS)
        ):
            return end - 1
        return end
    if _is_key(token):
        return end
    return None


def trailing_settings(sql: str) -> SettingsClause | None:
    """The clause that ends the query's top-level statement, or None without one."""
    tokens = _statement_tokens(_tokens(sql))
    settings: dict[str, str] = {}
    stream: bool | None = None  # the last ``stream`` setting decides
    position = len(tokens) - 1
    while position >= 0:
        start = _value_start(tokens, position)
        if start is None or start < 2:
            return None
        equals, key = tokens[start - 1], tokens[start - 2]
        if equals.token_type is not TokenType.EQ or not _is_key(key):
            return None
        name = key.text.lower()
        value = tokens[position]
        settings.setdefault(name, sql[tokens[start].start : value.end + 1])
        if name == "stream" and stream is None:
            stream = value.token_type is TokenType.TRUE
        before = start - 3
        if before < 0:
            return None
        if tokens[before].token_type is TokenType.COMMA:
            position = before - 1
            continue
        if tokens[before].text.upper() == "SETTINGS":
            return SettingsClause(settings, stream is True)
        return None
    return None


def with_streaming(sql: str) -> str:
    """``sql`` with ``SETTINGS stream = true`` appended on its own line (a trailing
    ``--`` comment cannot swallow it), after dropping a final ``;``."""
    return f"{without_final_semicolon(sql)}\nSETTINGS stream = true"


def unqualified_tables(sql: str) -> list[str]:
    """Tables the query reads without a ``<dataset>.`` (CTE names aside), for the hint
    on a "table not found" error; empty when the text cannot be parsed."""
    try:
        tree = sqlglot.parse_one(sql)
    except sqlglot.errors.SqlglotError:
        return []
    ctes = {cte.alias_or_name for cte in tree.find_all(exp.CTE)}
    names = {
        table.name
        for table in tree.find_all(exp.Table)
        if table.name and not table.db and table.name not in ctes
    }
    return sorted(names)


def without_final_semicolon(sql: str) -> str:
    """``sql`` without its final ``;`` (and the comments after it), trailing space cut."""
    tokens = _tokens(sql)
    statement = _statement_tokens(tokens)
    body = sql[: tokens[len(statement)].start] if len(statement) < len(tokens) else sql
    return body.rstrip()
