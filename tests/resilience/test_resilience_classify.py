"""ErrorClassifier: transient or permanent, from real exception objects (pyarrow Flight,
psycopg against the real PostgreSQL, redis, confluent_kafka, Python's own) and messages."""

from __future__ import annotations

import errno
import math
from collections.abc import Iterator

import psycopg
import psycopg.errors as pg_errors
import pyarrow as pa
import pyarrow.flight as flight
import pytest
import redis.exceptions as redis_errors
from confluent_kafka import KafkaError, KafkaException
from resilience_support import HTTPResponse, HTTPResponseError, HTTPStatusError

from amp.errors import (
    CircuitOpenError,
    ConfigError,
    DestinationError,
    FatalLoadError,
    ProtocolError,
    ServerError,
)
from amp.flight.transport import grpc_status_of, map_flight_errors
from amp.streaming.classify import ErrorClassifier, ErrorKind
from amp.streaming.resilience import ErrorClassifier as ExportedClassifier
from kit import PG_DSN, require_postgres


def transient(failure: BaseException | str) -> bool:
    """Both ways the guide allows: on the class and on an instance."""
    on_class = ErrorClassifier.is_transient(failure)
    assert ErrorClassifier().is_transient(failure) is on_class
    assert ErrorClassifier.classify(failure).transient is on_class
    assert (ErrorClassifier.classify(failure).kind is ErrorKind.TRANSIENT) is on_class
    return on_class


def test_the_classifier_is_exported_by_the_resilience_module() -> None:
    assert ExportedClassifier is ErrorClassifier


# -- gRPC, through real pyarrow Flight exceptions ---------------------------------------


@pytest.mark.parametrize(
    ("exc", "status", "is_transient", "timed_out"),
    [
        (flight.FlightUnavailableError("x"), "UNAVAILABLE", True, False),
        (flight.FlightTimedOutError("x"), "DEADLINE_EXCEEDED", True, True),
        (flight.FlightInternalError("x"), "INTERNAL", True, False),
        (flight.FlightUnauthenticatedError("x"), "UNAUTHENTICATED", False, False),
        (flight.FlightUnauthorizedError("x"), "PERMISSION_DENIED", False, False),
        (pa.ArrowInvalid("bad sql"), "INVALID_ARGUMENT", False, False),
        (pa.ArrowKeyError("no such table"), "NOT_FOUND", False, False),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else None,
)
def test_pyarrow_flight_errors(
    exc: BaseException, status: str, is_transient: bool, timed_out: bool
) -> None:
    assert grpc_status_of(exc) == status
    assert transient(exc) is is_transient
    found = ErrorClassifier.classify(exc)
    assert found.timed_out is timed_out
    assert not found.rate_limited


def test_resource_exhausted_arrow_invalid_is_transient_and_rate_limited() -> None:
    exc = pa.ArrowInvalid("gRPC returned resource exhausted error, with message: slow down")
    assert grpc_status_of(exc) == "RESOURCE_EXHAUSTED"
    found = ErrorClassifier.classify(exc)
    assert found.transient
    assert found.rate_limited


def test_plain_arrow_invalid_mentioning_no_grpc_code_is_permanent() -> None:
    assert not transient(pa.ArrowInvalid("bad sql"))
    assert not ErrorClassifier.classify(pa.ArrowInvalid("bad sql")).rate_limited


@pytest.mark.parametrize(
    ("exc", "status", "is_transient"),
    [
        (flight.FlightUnavailableError("connection refused"), "UNAVAILABLE", True),
        (flight.FlightTimedOutError("deadline"), "DEADLINE_EXCEEDED", True),
        (flight.FlightUnauthenticatedError("no token"), "UNAUTHENTICATED", False),
        (
            pa.ArrowInvalid("gRPC returned resource exhausted error, with message: slow"),
            "RESOURCE_EXHAUSTED",
            True,
        ),
        (pa.ArrowInvalid("bad sql"), "INVALID_ARGUMENT", False),
    ],
)
def test_map_flight_errors_keeps_the_status_and_the_cause(
    exc: BaseException, status: str, is_transient: bool
) -> None:
    with pytest.raises(ServerError) as info, map_flight_errors("grpc://amp:1602", "DoGet"):
        raise exc
    assert info.value.status == status
    assert info.value.__cause__ is exc
    assert transient(info.value) is is_transient


@pytest.mark.parametrize(
    ("status", "is_transient", "rate_limited", "timed_out"),
    [
        ("UNAVAILABLE", True, False, False),
        ("DEADLINE_EXCEEDED", True, False, True),
        ("RESOURCE_EXHAUSTED", True, True, False),
        ("ABORTED", True, False, False),
        ("INTERNAL", True, False, False),
        ("INVALID_ARGUMENT", False, False, False),
        ("NOT_FOUND", False, False, False),
        ("PERMISSION_DENIED", False, False, False),
        ("UNAUTHENTICATED", False, False, False),
        ("UNIMPLEMENTED", False, False, False),
    ],
)
def test_server_error_status(
    status: str, is_transient: bool, rate_limited: bool, timed_out: bool
) -> None:
    found = ErrorClassifier.classify(ServerError("GetFlightInfo failed", status))
    assert found.transient is is_transient
    assert found.rate_limited is rate_limited
    assert found.timed_out is timed_out


def test_server_error_status_wins_over_its_words() -> None:
    # Types and codes first, words last.
    assert not transient(ServerError("service unavailable, try again", "INVALID_ARGUMENT"))
    assert transient(ServerError("syntax error", "UNAVAILABLE"))


# -- PostgreSQL: real SQLSTATEs from the real server -------------------------------------


@pytest.fixture(scope="module")
def pg() -> Iterator[psycopg.Connection]:
    require_postgres()
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        yield conn


def _pg_error(conn: psycopg.Connection, *statements: str) -> psycopg.Error:
    try:
        for statement in statements:
            conn.execute(statement)
    except psycopg.Error as exc:
        return exc
    finally:
        conn.execute("RESET statement_timeout")
    raise AssertionError(f"{statements} did not fail")


def test_real_division_by_zero_is_permanent(pg: psycopg.Connection) -> None:
    exc = _pg_error(pg, "SELECT 1/0")
    assert exc.sqlstate == "22012"
    assert not transient(exc)
    assert not transient(DestinationError(str(exc), exc.sqlstate))


def test_real_syntax_error_is_permanent(pg: psycopg.Connection) -> None:
    exc = _pg_error(pg, "SELEC 1")
    assert exc.sqlstate == "42601"
    assert isinstance(exc, pg_errors.SyntaxError)
    assert not transient(exc)
    assert not transient(DestinationError(str(exc), exc.sqlstate))


def test_real_statement_timeout_is_transient_and_timed_out(pg: psycopg.Connection) -> None:
    exc = _pg_error(pg, "SET statement_timeout = 10", "SELECT pg_sleep(1)")
    assert exc.sqlstate == "57014"
    found = ErrorClassifier.classify(exc)
    assert found.transient
    assert found.timed_out
    wrapped = ErrorClassifier.classify(DestinationError(str(exc), exc.sqlstate))
    assert wrapped.transient
    assert wrapped.timed_out


def test_real_undefined_table_is_permanent(pg: psycopg.Connection) -> None:
    exc = _pg_error(pg, "SELECT * FROM amp_no_such_table_for_resilience_tests")
    assert exc.sqlstate == "42P01"
    assert not transient(exc)


@pytest.mark.parametrize(
    ("exc", "sqlstate", "is_transient"),
    [
        (pg_errors.SerializationFailure(), "40001", True),
        (pg_errors.DeadlockDetected(), "40P01", True),
        (pg_errors.AdminShutdown(), "57P01", True),
        (pg_errors.QueryCanceled(), "57014", True),
        (pg_errors.LockNotAvailable(), "55P03", True),
        (pg_errors.TooManyConnections(), "53300", True),
        (pg_errors.SyntaxError(), "42601", False),
        (pg_errors.InvalidPassword(), "28P01", False),
        (pg_errors.NumericValueOutOfRange(), "22003", False),
        (pg_errors.UniqueViolation(), "23505", False),
        (pg_errors.UndefinedColumn(), "42703", False),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else None,
)
def test_psycopg_error_classes(exc: psycopg.Error, sqlstate: str, is_transient: bool) -> None:
    assert exc.sqlstate == sqlstate
    assert transient(exc) is is_transient
    assert transient(DestinationError("write failed", sqlstate)) is is_transient


def test_psycopg_connection_lost_without_sqlstate_is_transient() -> None:
    exc = psycopg.OperationalError("connection lost")
    assert exc.sqlstate is None
    assert transient(exc)


def test_real_connection_refused_is_transient() -> None:
    try:
        psycopg.connect("host=127.0.0.1 port=1 dbname=test user=postgres connect_timeout=2")
    except psycopg.OperationalError as exc:
        assert transient(exc)
    else:
        raise AssertionError("connecting to port 1 succeeded")


def test_destination_error_raised_from_psycopg_is_classified_by_its_cause() -> None:
    for cause, expected in (
        (pg_errors.SerializationFailure(), True),
        (pg_errors.SyntaxError(), False),
        (psycopg.OperationalError("server closed the connection unexpectedly"), True),
    ):
        try:
            try:
                raise cause
            except psycopg.Error as exc:
                raise DestinationError("commit failed") from exc
        except DestinationError as wrapped:
            assert wrapped.__cause__ is cause
            assert transient(wrapped) is expected, cause


def test_chain_of_a_real_postgres_error(pg: psycopg.Connection) -> None:
    try:
        try:
            pg.execute("SELEC 1")
        except psycopg.Error as exc:
            # The wrapper's own words would say transient: its cause decides.
            raise DestinationError("batch write timed out?") from exc
    except DestinationError as wrapped:
        assert not transient(wrapped)


# -- redis, Kafka, Python's own ---------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "is_transient", "timed_out"),
    [
        (redis_errors.ConnectionError("Error 111 connecting"), True, False),
        (redis_errors.TimeoutError("Timeout reading from socket"), True, True),
        (redis_errors.ResponseError("WRONGTYPE Operation against a key"), False, False),
        (redis_errors.AuthenticationError("invalid password"), False, False),
        (redis_errors.BusyLoadingError("Redis is loading"), True, False),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else None,
)
def test_redis_errors(exc: BaseException, is_transient: bool, timed_out: bool) -> None:
    assert transient(exc) is is_transient
    assert ErrorClassifier.classify(exc).timed_out is timed_out


def test_kafka_transport_error_is_transient() -> None:
    exc = KafkaException(KafkaError(KafkaError._TRANSPORT))
    assert transient(exc)


def test_kafka_authorization_failure_is_permanent() -> None:
    assert not transient(KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)))


def test_kafka_timed_out_is_transient_and_timed_out() -> None:
    found = ErrorClassifier.classify(KafkaException(KafkaError(KafkaError._MSG_TIMED_OUT)))
    assert found.transient
    assert found.timed_out


@pytest.mark.parametrize(
    ("exc", "is_transient", "timed_out"),
    [
        (ConnectionResetError(104, "Connection reset by peer"), True, False),
        (ConnectionRefusedError(111, "Connection refused"), True, False),
        (TimeoutError("timed out"), True, True),
        (TimeoutError(), True, True),
        (ValueError("bad value"), False, False),
        (KeyError("column"), False, False),
    ],
    ids=lambda value: repr(value) if isinstance(value, BaseException) else None,
)
def test_python_errors(exc: BaseException, is_transient: bool, timed_out: bool) -> None:
    assert transient(exc) is is_transient
    assert ErrorClassifier.classify(exc).timed_out is timed_out


@pytest.mark.parametrize(
    "code", [errno.ECONNRESET, errno.ECONNREFUSED, errno.ETIMEDOUT, errno.EPIPE]
)
def test_plain_os_errors_with_network_errnos_are_transient(code: int) -> None:
    assert transient(OSError(code, "socket error"))


def test_plain_os_error_with_another_errno_is_permanent() -> None:
    assert not transient(OSError(errno.ENOENT, "No such file or directory"))


# -- HTTP status codes -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "is_transient", "rate_limited"),
    [
        (429, True, True),
        (503, True, False),
        (504, True, False),
        (400, False, False),
        (401, False, False),
        (403, False, False),
        (404, False, False),
    ],
)
def test_status_code_attribute(code: int, is_transient: bool, rate_limited: bool) -> None:
    exc = HTTPStatusError(code, "request failed")
    assert transient(exc) is is_transient
    assert ErrorClassifier.classify(exc).rate_limited is rate_limited
    # A response's status code counts too.
    assert transient(HTTPResponseError(HTTPResponse(code, {}))) is is_transient


def test_status_code_wins_over_words() -> None:
    assert not transient(HTTPStatusError(400, "rate limit field is invalid"))
    assert transient(HTTPStatusError(503, "not found"))


def test_retry_after_hint_is_carried() -> None:
    found = ErrorClassifier.classify(HTTPStatusError(429, retry_after=7))
    assert found.retry_after_seconds == 7.0
    response = HTTPResponse(503, {"Retry-After": "12"})
    assert ErrorClassifier.classify(HTTPResponseError(response)).retry_after_seconds == 12.0
    assert ErrorClassifier.classify(HTTPStatusError(503)).retry_after_seconds is None


@pytest.mark.parametrize("header", ["-5", "nan"])
def test_a_nonsense_retry_after_header_is_ignored(header: str) -> None:
    # The ``retry_after`` attribute is only used when >= 0; the Retry-After header is used
    # unchecked, and a negative or NaN delay then reaches clock.sleep() (ValueError).
    response = HTTPResponse(503, {"Retry-After": header})
    hint = ErrorClassifier.classify(HTTPResponseError(response)).retry_after_seconds
    assert hint is None or (math.isfinite(hint) and hint >= 0), hint


# -- messages ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "rate_limited", "timed_out"),
    [
        ("HTTP 429 Too Many Requests", True, False),
        ("Rate limit exceeded", True, False),
        ("Throttled", True, False),
        ("Service unavailable", False, False),
        ("HTTP 503 Service Unavailable", False, False),
        ("HTTP 504 Gateway Timeout", False, True),
        ("Connection reset by peer", False, False),
        ("Connection refused", False, False),
        ("connection timed out", False, True),
        ("Connection timeout", False, True),
    ],
)
def test_transient_messages(message: str, rate_limited: bool, timed_out: bool) -> None:
    assert transient(message)
    found = ErrorClassifier.classify(message)
    assert found.rate_limited is rate_limited
    assert found.timed_out is timed_out
    # The same words in an exception without types or codes.
    assert transient(RuntimeError(message))


@pytest.mark.parametrize(
    "message",
    [
        "HTTP 400 Bad Request",
        "HTTP 401 Unauthorized",
        "HTTP 403 Forbidden",
        "HTTP 404 Not Found",
        'syntax error at or near "SELEC"',
        "invalid credentials",
        'column "invalid_field" does not exist',
        "schema validation failed: expected int64",
        "something odd happened",  # unknown: stop, do not guess
    ],
)
def test_permanent_messages(message: str) -> None:
    assert not transient(message)
    assert not transient(RuntimeError(message))


@pytest.mark.parametrize("message", ["failed at block 1429", "block 4290 failed"])
def test_numbers_containing_429_are_not_rate_limits(message: str) -> None:
    found = ErrorClassifier.classify(message)
    assert not found.rate_limited
    assert not found.transient


@pytest.mark.parametrize(
    "message",
    [
        'column "timeout_ms" does not exist',
        'relation "ratelimit_state" does not exist',
        'invalid value for parameter "statement_timeout": "soon"',
    ],
)
def test_keywords_inside_identifiers_are_not_whole_tokens(message: str) -> None:
    # The classifier matches words "on whole tokens" (block 1429 is not a 429). The same
    # must hold for 'timeout' in timeout_ms / statement_timeout and 'ratelimit' in
    # ratelimit_state: these are permanent errors about names, not timeouts or 429s.
    found = ErrorClassifier.classify(message)
    assert not found.timed_out
    assert not found.rate_limited
    assert not found.transient


# -- amp's own errors --------------------------------------------------------------------


def test_amp_config_and_protocol_errors_are_permanent() -> None:
    assert not transient(ConfigError("resilience['retry']['max_retries'] must be >= 0"))
    # Even when their words sound transient.
    assert not transient(ConfigError("timeout must be a number"))
    assert not transient(ProtocolError("gap after block 1429: connection reset?"))
    assert not transient(FatalLoadError("FATAL: Max retries (5) exceeded."))


def test_circuit_open_error_is_transient() -> None:
    assert transient(CircuitOpenError("circuit breaker is OPEN", retry_in_seconds=3.0))


def test_permanent_wrapper_of_a_transient_cause_stays_permanent() -> None:
    try:
        try:
            raise ConnectionResetError("reset")
        except ConnectionResetError as exc:
            raise ConfigError("bad host in config") from exc
    except ConfigError as wrapped:
        assert not transient(wrapped)


def test_implicit_context_is_followed_when_there_is_no_cause() -> None:
    try:
        try:
            raise pg_errors.DeadlockDetected()
        except psycopg.Error:
            raise RuntimeError("write failed")  # noqa: B904 - implicit context on purpose
    except RuntimeError as chained:
        assert chained.__cause__ is None
        assert transient(chained)


def test_a_self_referencing_chain_terminates() -> None:
    first = RuntimeError("a")
    second = RuntimeError("b")
    first.__cause__ = second
    second.__cause__ = first
    assert not transient(first)
