"""Hiding secrets in everything amp prints: errors, logs, reprs, progress.

Why one module: a secret leaks through the one message that forgot to hide it, so
every message that may hold a URL or a configuration value goes through these two
functions: URL userinfo (``user:password@``, ``token@``) and the values of keys whose
name says they are secret (password, token, secret, ``sasl.password``, api_key...).
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

MASK = "***"

# Words that make a configuration key secret wherever they appear in its name.
_SECRET_WORDS = ("password", "passwd", "pwd", "secret", "token", "api_key", "apikey", "jaas")
# Keys whose last part (split at dots and underscores) is one of these are secret too:
# ssl.key.pem and private_key hold key material; ssl.key.location is only a path.
_SECRET_LAST_PARTS = ("key", "pem", "credentials", "auth")
# ``scheme://userinfo@`` anywhere in a text: what free text may hold (a URL in an error).
# ``password=...`` in a key=value connection string (a libpq DSN).
_KEYWORD_PASSWORD = re.compile(r"(?i)\b(password|passwd|pwd)\s*=\s*('(?:[^'\\]|\\.)*'|\S+)")
# Keys holding a connection string or URL: a wrong-typed value might be a secret in
# disguise, and a right-typed one loses its userinfo and password.
_CONNECTION_KEYS = frozenset({"dsn", "url", "uri", "conninfo", "connection_string"})
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#@\s]*)@")


def is_secret_key(key: object) -> bool:
    """True when a configuration key's name says its value is a secret."""
    name = str(key).lower().replace("-", "_")
    if any(word in name for word in _SECRET_WORDS):
        return True
    return re.split(r"[._]", name)[-1] in _SECRET_LAST_PARTS


def redact_value(key: object, value: Any) -> str:
    """``repr(value)`` for messages, or ``***`` when ``key`` names a secret; URLs in
    the value lose their userinfo."""
    if is_secret_key(key):
        return MASK
    if str(key).lower() in _CONNECTION_KEYS and not isinstance(value, str):
        return f"a {type(value).__name__} ({MASK})"
    return redact_text(repr(value))


def redact_url(url: str) -> str:
    """``url`` with any userinfo (``user:password@`` or ``token@``) replaced by ``***@``:
    a user name alone may be a token too, so none of it is shown."""
    return redact_text(url)


# Values this process knows to be secrets wherever they appear (say, what a config file
# interpolated from the environment): masked in any text. Shorter ones are left to the
# rules above: masking a two-letter value everywhere would garble every message.
_KNOWN_SECRETS: set[str] = set()
_SHORTEST_KNOWN_SECRET = 4


def register_secret(value: str) -> None:
    """Mask ``value`` in every text ``redact_text`` sees from now on (this process)."""
    if len(value) >= _SHORTEST_KNOWN_SECRET:
        _KNOWN_SECRETS.add(value)


def redact_text(text: str) -> str:
    """``text`` with the userinfo of every URL in it, every ``password=`` value of a
    key=value connection string and every registered secret replaced by ``***``."""
    for secret in sorted(_KNOWN_SECRETS, key=len, reverse=True):
        text = text.replace(secret, MASK)
    text = _USERINFO.sub(lambda match: f"{match.group('scheme')}{MASK}@", text)
    return _KEYWORD_PASSWORD.sub(lambda match: f"{match.group(1)}={MASK}", text)


def strip_userinfo(url: str) -> tuple[str, str | None, str | None]:
    """``(url without userinfo, user, password)``, user and password percent-decoded."""
    parsed = urllib.parse.urlsplit(url)
    if "@" not in parsed.netloc:
        return url, None, None
    userinfo, _, hostport = parsed.netloc.rpartition("@")
    user, has_password, password = userinfo.partition(":")
    bare = urllib.parse.urlunsplit(parsed._replace(netloc=hostport))
    return (
        bare,
        urllib.parse.unquote(user) or None,
        urllib.parse.unquote(password) if has_password else None,
    )
