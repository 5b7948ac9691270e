"""A server FATAL at connection start-up is classified by its SQLSTATE: psycopg 3.3 raises
a bare OperationalError without one, so amp recovers it from the FATAL line (last resort,
after ``sqlstate`` and ``diag``). A refused or unreachable server stays transient."""

from __future__ import annotations

import psycopg
import pytest

from amp.streaming.classify import ErrorClassifier, psycopg_sqlstate

PG = "host=127.0.0.1 port=5432 connect_timeout=5"


def _connect_error(conninfo: str) -> psycopg.OperationalError:
    try:
        psycopg.connect(conninfo).close()
    except psycopg.OperationalError as exc:
        return exc
    pytest.fail(f"connecting with {conninfo!r} succeeded; expected a server FATAL")


@pytest.mark.parametrize(
    ("conninfo", "sqlstate"),
    [
        (f"{PG} dbname=test user=amp_no_such_role", "28000"),
        (f"{PG} dbname=amp_no_such_db user=postgres", "3D000"),
    ],
    ids=["role", "database"],
)
def test_real_fatal_at_connect_is_permanent(conninfo: str, sqlstate: str) -> None:
    exc = _connect_error(conninfo)
    assert psycopg_sqlstate(exc) == sqlstate, str(exc)
    found = ErrorClassifier.classify(exc)
    assert not found.transient and found.reason == f"SQLSTATE {sqlstate}", found


def test_wrong_password_wording_is_permanent() -> None:
    # The test server trusts every local connection, so libpq's exact wording for a wrong
    # password (PostgreSQL 10-18) is built here instead of received.
    exc = psycopg.OperationalError(
        'connection failed: connection to server at "127.0.0.1", port 5432 failed: '
        'FATAL:  password authentication failed for user "loader"'
    )
    assert psycopg_sqlstate(exc) == "28P01"
    assert not ErrorClassifier.is_transient(exc)


def test_refused_connection_stays_transient() -> None:
    exc = _connect_error("host=127.0.0.1 port=1 dbname=test user=postgres connect_timeout=5")
    assert psycopg_sqlstate(exc) is None
    assert ErrorClassifier.is_transient(exc)


def test_too_many_clients_fatal_stays_transient() -> None:
    exc = psycopg.OperationalError(
        'connection failed: connection to server at "127.0.0.1", port 5432 failed: '
        "FATAL:  sorry, too many clients already"
    )
    assert psycopg_sqlstate(exc) is None
    assert ErrorClassifier.is_transient(exc)
