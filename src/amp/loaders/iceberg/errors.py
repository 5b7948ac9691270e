"""Which Iceberg failures are worth retrying, decided by exception type.

Why its own classifier: pyiceberg and the SQL catalog (SQLAlchemy) raise their own
types, which amp's generic rules do not know. A lost commit race (CommitFailedException)
and an unknown commit outcome are transient: the unit is replayed whole, its blocks
deleted before its rows are appended again, so a replay is exact. A catalog database
that cannot be reached is transient too; a missing table or namespace, a schema or a
validation error is permanent.
"""

from __future__ import annotations

from amp.errors import DestinationError
from amp.redact import redact_text
from amp.streaming.classify import Classification, ErrorClassifier, ErrorKind


def _iceberg_kind(exc: BaseException) -> Classification | None:
    try:
        from pyiceberg import exceptions as iceberg
        from sqlalchemy import exc as sa
    except ImportError:  # the iceberg extra is not installed: nothing of it was raised
        return None

    name = type(exc).__name__
    transient = (
        iceberg.CommitFailedException,
        iceberg.CommitStateUnknownException,
        iceberg.ServiceUnavailableError,
        iceberg.TooManyRequestsError,
        iceberg.WaitingForLockException,
        sa.OperationalError,
        sa.DisconnectionError,
        sa.TimeoutError,
        sa.InterfaceError,
    )
    if isinstance(exc, transient):
        return Classification(
            ErrorKind.TRANSIENT,
            f"iceberg {name}",
            rate_limited=isinstance(exc, iceberg.TooManyRequestsError),
        )
    permanent = (
        iceberg.NoSuchTableError,
        iceberg.NoSuchNamespaceError,
        iceberg.ValidationException,
        iceberg.ValidationError,
        iceberg.UnauthorizedError,
        iceberg.ForbiddenError,
        iceberg.BadRequestError,
        sa.ArgumentError,
        sa.ProgrammingError,
    )
    if isinstance(exc, permanent):
        return Classification(ErrorKind.PERMANENT, f"iceberg {name}")
    return None


class IcebergErrorClassifier(ErrorClassifier):
    """amp's rules, after pyiceberg's and SQLAlchemy's types along the cause chain."""

    @classmethod
    def classify(cls, failure: BaseException | str) -> Classification:
        if isinstance(failure, BaseException):
            seen: set[int] = set()
            current: BaseException | None = failure
            while current is not None and id(current) not in seen:
                seen.add(id(current))
                found = _iceberg_kind(current)
                if found is not None:
                    return found
                current = current.__cause__ or current.__context__
        return super().classify(failure)


def failure(what: str, exc: BaseException) -> BaseException:
    """The error to raise (``raise failure(...)``, inside the ``except``) for ``exc``
    while doing ``what``: amp's own errors as they are, anything else a
    DestinationError (secrets masked) caused by it."""
    from amp.errors import AmpError

    if isinstance(exc, AmpError):
        return exc
    error = DestinationError(
        f"Iceberg: {what} failed: {redact_text(f'{type(exc).__name__}: {exc}')}"
    )
    error.__cause__ = exc
    return error
