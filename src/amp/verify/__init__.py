"""Verification of a destination table against the server: ``verify(...)`` (and
``amp verify``) reports rows missing, duplicated or extra, by block range.

- ``amp.verify.rowhash``: canonical row hashes, the same for every side's types.
- ``amp.verify.source``: the server's query, restricted to one block range.
- ``amp.verify.destinations``: PostgreSQL and DuckDB tables read one block range at a time.
- ``amp.verify.compare``: the windows, their checksums and the drilling into differences.
"""

from __future__ import annotations

from amp.errors import ConfigError
from amp.verify.compare import DEFAULT_RANGE_ROWS, DifferingRange, Verification, VerifyReport
from amp.verify.destinations import SUPPORTED, open_destination
from amp.verify.source import ServerSide

__all__ = [
    "DEFAULT_RANGE_ROWS",
    "SUPPORTED",
    "DifferingRange",
    "VerifyReport",
    "verify",
]


def verify(
    server: str,
    query: str,
    to: str,
    table: str,
    *,
    from_block: int | None = None,
    to_block: int | None = None,
    range_rows: int = DEFAULT_RANGE_ROWS,
    auth_token: str | None = None,
) -> VerifyReport:
    """Compare ``table`` at destination URL ``to`` with what ``query`` returns on
    ``server`` now, over blocks ``from_block..to_block`` (default: every block either
    side has)."""
    if from_block is not None and to_block is not None and from_block > to_block:
        raise ConfigError(f"amp verify: --from-block {from_block} is after --to-block {to_block}")
    from amp.client import Client  # the Flight client: imported when verify runs

    destination = open_destination(to)
    client = Client(server, auth_token=auth_token)
    try:
        return Verification(
            ServerSide(client, query),
            destination,
            table,
            first_block=from_block,
            last_block=to_block,
            range_rows=range_rows,
        ).run()
    finally:
        client.close()
        destination.close()
