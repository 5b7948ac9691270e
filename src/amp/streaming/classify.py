"""Is this failure worth retrying? Decided on types and codes first, words last.

Order of evidence, most reliable first:
1. amp's own errors (``ConfigError``, ``ProtocolError`` are permanent; ``ServerError``
   carries the gRPC status; ``DestinationError`` its SQLSTATE);
2. gRPC status codes (pyarrow Flight exception types, ``grpc.RpcError.code()``);
3. SQLSTATE classes (psycopg), redis and Kafka error types, Python's OS errors;
4. an HTTP status code carried by the exception;
5. only then the message, matched on whole tokens: block 1429 is not a 429.
"""

from __future__ import annotations

import errno
import math
import re
from dataclasses import dataclass
from enum import Enum

from amp.errors import (
    CircuitOpenError,
    ConfigError,
    DestinationError,
    FatalLoadError,
    ProtocolError,
    ServerError,
)


class ErrorKind(Enum):
    TRANSIENT = "transient"
    PERMANENT = "permanent"


@dataclass(frozen=True, slots=True)
class Classification:
    """What a failure is: retry or not, and whether it asks us to slow down."""

    kind: ErrorKind
    reason: str
    rate_limited: bool = False
    timed_out: bool = False
    retry_after_seconds: float | None = None

    @property
    def transient(self) -> bool:
        return self.kind is ErrorKind.TRANSIENT


_TRANSIENT_GRPC = {
    "UNAVAILABLE",
    "DEADLINE_EXCEEDED",
    "RESOURCE_EXHAUSTED",
    "ABORTED",
    "INTERNAL",
    "UNKNOWN",
    "CANCELLED",
}
_PERMANENT_GRPC = {
    "INVALID_ARGUMENT",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "UNAUTHENTICATED",
    "FAILED_PRECONDITION",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "DATA_LOSS",
}

# SQLSTATE: exact codes first, then two-character classes.
_TRANSIENT_SQLSTATES = {"40001", "40P01", "55P03", "57014", "57P01", "57P02", "57P03", "25P03"}
_PERMANENT_SQLSTATES: set[str] = set()
_TRANSIENT_SQLSTATE_CLASSES = {"08", "53", "58", "40"}
_PERMANENT_SQLSTATE_CLASSES = {"22", "23", "28", "42", "0A", "3D", "3F", "2B", "44", "P0", "XX"}
_TIMEOUT_SQLSTATES = {"57014", "55P03"}

_TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}
_PERMANENT_HTTP = {400, 401, 403, 404, 405, 409, 410, 422}

_TRANSIENT_ERRNOS = {
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.ETIMEDOUT,
    errno.EPIPE,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.EAGAIN,
}

_TRANSIENT_WORDS = re.compile(
    r"\b(?:429|502|503|504)\b|\brate[ -]?limit(?:ed|s|ing)?\b|\btoo many requests\b"
    r"|\bthrottl(?:e|ed|es|ing)\b|\bservice unavailable\b|\btemporarily unavailable\b"
    r"|\btimed? ?out\b|\btimeouts?\b"
    r"|\bconnection (?:reset|refused|closed|aborted|lost)\b|\bbroken pipe\b|\btry again\b",
    re.IGNORECASE,
)
_PERMANENT_WORDS = re.compile(
    r"\b(?:400|401|403|404)\b|syntax error|invalid credentials|unauthori[sz]ed|forbidden"
    r"|not found|does not exist|permission denied|authentication failed|invalid input"
    r"|schema",
    re.IGNORECASE,
)
_RATE_LIMIT_WORDS = re.compile(
    r"\b429\b|\brate[ -]?limit(?:ed|s|ing)?\b|\btoo many requests\b|\bthrottl(?:e|ed|es|ing)\b",
    re.IGNORECASE,
)
_TIMEOUT_WORDS = re.compile(r"\btimed? ?out\b|\btimeouts?\b|\b504\b", re.IGNORECASE)


def _transient(reason: str, **flags: object) -> Classification:
    return Classification(ErrorKind.TRANSIENT, reason, **flags)  # type: ignore[arg-type]


def _permanent(reason: str) -> Classification:
    return Classification(ErrorKind.PERMANENT, reason)


def classify_grpc_status(status: str) -> Classification | None:
    if status in _TRANSIENT_GRPC:
        return _transient(
            f"gRPC {status}",
            rate_limited=status == "RESOURCE_EXHAUSTED",
            timed_out=status == "DEADLINE_EXCEEDED",
        )
    if status in _PERMANENT_GRPC:
        return _permanent(f"gRPC {status}")
    return None


def classify_sqlstate(sqlstate: str) -> Classification | None:
    if sqlstate in _TRANSIENT_SQLSTATES or sqlstate[:2] in _TRANSIENT_SQLSTATE_CLASSES:
        return _transient(f"SQLSTATE {sqlstate}", timed_out=sqlstate in _TIMEOUT_SQLSTATES)
    if sqlstate in _PERMANENT_SQLSTATES or sqlstate[:2] in _PERMANENT_SQLSTATE_CLASSES:
        return _permanent(f"SQLSTATE {sqlstate}")
    return None


def classify_http_status(code: int) -> Classification | None:
    if code in _TRANSIENT_HTTP or 500 <= code < 600:
        return _transient(f"HTTP {code}", rate_limited=code == 429, timed_out=code in (408, 504))
    if code in _PERMANENT_HTTP or 400 <= code < 500:
        return _permanent(f"HTTP {code}")
    return None


def classify_message(message: str) -> Classification:
    """Words, matched on whole tokens; unknown text is permanent (stop, do not guess)."""
    if _TRANSIENT_WORDS.search(message):
        return _transient(
            "message",
            rate_limited=bool(_RATE_LIMIT_WORDS.search(message)),
            timed_out=bool(_TIMEOUT_WORDS.search(message)),
        )
    if _PERMANENT_WORDS.search(message):
        return _permanent("message")
    return _permanent("unrecognised error")


def _retry_after(exc: BaseException) -> float | None:
    value = getattr(exc, "retry_after", None)
    if isinstance(value, int | float) and math.isfinite(value) and value >= 0:
        return float(value)
    headers = getattr(getattr(exc, "response", None), "headers", None)
    if headers is not None:
        try:
            seconds = float(headers.get("Retry-After"))
        except (TypeError, ValueError):
            return None
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    return None


def _by_type(exc: BaseException) -> Classification | None:
    """Evidence from the exception's type and codes, or None when it has none."""
    if isinstance(exc, ConfigError | ProtocolError | FatalLoadError):
        return _permanent(type(exc).__name__)
    if isinstance(exc, ServerError):
        return classify_grpc_status(exc.status)
    if isinstance(exc, DestinationError) and exc.sqlstate:
        return classify_sqlstate(exc.sqlstate)
    if isinstance(exc, CircuitOpenError):
        return _transient("circuit breaker open")
    for classifier in (_grpc, _psycopg, _redis, _kafka, _duckdb, _http):
        found = classifier(exc)
        if found is not None:
            return found
    if isinstance(exc, TimeoutError):
        return _transient("timeout", timed_out=True)
    if isinstance(exc, ConnectionError):
        return _transient(type(exc).__name__)
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return _transient(f"errno {exc.errno}")
    return None


def _grpc(exc: BaseException) -> Classification | None:
    from amp.flight.transport import grpc_status_of

    status = grpc_status_of(exc)
    if status is None:
        code = getattr(exc, "code", None)
        if callable(code):
            try:
                status = getattr(code(), "name", None)
            except Exception:
                status = None
    return classify_grpc_status(status) if isinstance(status, str) else None


# The server's FATAL replies during connection start-up, for a psycopg that does not
# expose their SQLSTATE (libpq keeps the error result of a failed start-up to itself, so
# psycopg 3.3 raises a bare OperationalError). Only permanent ones are listed: anything
# else without a SQLSTATE stays a transient connection failure.
_CONNECT_FATALS = (
    (re.compile(r'\brole "[^"]*" does not exist'), "28000"),
    (re.compile(r"\bno pg_hba\.conf entry for\b|\bpg_hba\.conf rejects connection\b"), "28000"),
    (re.compile(r'\brole "[^"]*" is not permitted to log in'), "28000"),
    (re.compile(r"\bpassword authentication failed for user\b"), "28P01"),
    (re.compile(r"\bauthentication failed for user\b"), "28000"),
    (re.compile(r'\bdatabase "[^"]*" does not exist'), "3D000"),
    (re.compile(r"\bpermission denied for database\b"), "42501"),
)
_SERVER_FATAL = re.compile(r"\bFATAL:\s+(.+)")


def psycopg_sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a psycopg error, including a server FATAL at connection time.

    The error's own ``sqlstate``, else its diagnostic's; only when both are missing (a
    failed connection start-up) the server's FATAL line is matched against its known
    permanent messages. None when nothing says.
    """
    sqlstate = getattr(exc, "sqlstate", None)
    if not sqlstate:
        diag = getattr(exc, "diag", None)
        sqlstate = getattr(diag, "sqlstate", None) if diag is not None else None
    if sqlstate:
        return str(sqlstate)
    for fatal in _SERVER_FATAL.finditer(str(exc)):
        for pattern, code in _CONNECT_FATALS:
            if pattern.search(fatal.group(1)):
                return code
    return None


def _psycopg(exc: BaseException) -> Classification | None:
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return None
    if not isinstance(exc, psycopg.Error):
        return None
    sqlstate = psycopg_sqlstate(exc)
    if sqlstate:
        return classify_sqlstate(sqlstate)
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return _transient(f"psycopg {type(exc).__name__}")  # connection lost, no SQLSTATE
    return None


def _redis(exc: BaseException) -> Classification | None:
    try:
        from redis import exceptions as redis_errors
    except ImportError:  # pragma: no cover
        return None
    if isinstance(exc, redis_errors.AuthenticationError | redis_errors.AuthorizationError):
        return _permanent(f"redis {type(exc).__name__}")
    if isinstance(exc, redis_errors.TimeoutError):
        return _transient("redis timeout", timed_out=True)
    transient_types = (
        redis_errors.ConnectionError,
        redis_errors.BusyLoadingError,
        redis_errors.TryAgainError,
        redis_errors.ClusterDownError,
    )
    if isinstance(exc, transient_types):
        return _transient(f"redis {type(exc).__name__}")
    if isinstance(exc, redis_errors.RedisError):
        return _permanent(f"redis {type(exc).__name__}")
    return None


def _kafka(exc: BaseException) -> Classification | None:
    try:
        from confluent_kafka import KafkaError, KafkaException
    except ImportError:  # pragma: no cover
        return None
    error = exc.args[0] if isinstance(exc, KafkaException) and exc.args else exc
    if not isinstance(error, KafkaError):
        return None
    name = error.name()
    if error.fatal():
        return _permanent(f"Kafka {name} (fatal)")
    if "AUTHORIZATION" in name or "AUTHENTICATION" in name or name in ("UNKNOWN_TOPIC_OR_PART",):
        return _permanent(f"Kafka {name}")
    if error.retriable() or name.startswith("_") or "TIMED_OUT" in name or "NOT_LEADER" in name:
        return _transient(f"Kafka {name}", timed_out="TIMED_OUT" in name)
    return _permanent(f"Kafka {name}")


def _duckdb(exc: BaseException) -> Classification | None:
    try:
        import duckdb
    except ImportError:  # pragma: no cover
        return None
    if isinstance(exc, duckdb.TransactionException | duckdb.IOException):
        return _transient(f"duckdb {type(exc).__name__}")
    if isinstance(exc, duckdb.Error):
        return _permanent(f"duckdb {type(exc).__name__}")
    return None


def _http(exc: BaseException) -> Classification | None:
    for attribute in ("status_code", "status"):
        code = getattr(exc, attribute, None)
        if isinstance(code, int) and 100 <= code < 600:
            return classify_http_status(code)
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    if isinstance(code, int):
        return classify_http_status(code)
    return None


class ErrorClassifier:
    """Transient or permanent, for an exception or a message string.

    Works on the class (``ErrorClassifier.is_transient(exc)``) or an instance; override
    ``classify`` in a subclass to change the rules.
    """

    @classmethod
    def classify(cls, failure: BaseException | str) -> Classification:
        if isinstance(failure, str):
            return classify_message(failure)
        seen: set[int] = set()
        current: BaseException | None = failure
        while current is not None and id(current) not in seen:
            seen.add(id(current))
            found = _by_type(current)
            if found is not None:
                hint = _retry_after(current) or _retry_after(failure)
                if hint is not None:
                    found = Classification(
                        found.kind, found.reason, found.rate_limited, found.timed_out, hint
                    )
                return found
            current = current.__cause__ or current.__context__
        return classify_message(str(failure))

    @classmethod
    def is_transient(cls, failure: BaseException | str) -> bool:
        return cls.classify(failure).transient
