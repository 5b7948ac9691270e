"""PostgreSQL's claim of a stream: a session-level advisory lock, owner stored next to it.

Why an advisory lock: PostgreSQL releases it when the session ends, so a crashed load
never leaves a stale claim behind. Its owner (host, PID, start time) goes into the
table ``amp_stream_owners`` (row keyed by the lock and the backend holding it), and
``pg_locks``/``pg_stat_activity`` tell the holding backend, its application name and
client address, so a refused load can say exactly who holds the stream.

The lock belongs to the session: after a reconnect the loader takes it again before
writing (``PostgreSQLLoader.connect``), and stops if someone else took it meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from amp.errors import StreamOwnedError
from amp.loaders.ownership import Owner, Stream, owned_error
from amp.streaming.resilience import SystemClock

log = logging.getLogger("amp.loaders.postgresql")

OWNERS_TABLE = "amp_stream_owners"

# How long a start waits for a lock whose holder is a crashed process on this host:
# PostgreSQL ends a dead client's session when it notices the socket closed (usually
# at once, at most a moment later).
CLAIM_WAIT_SECONDS = 10.0
_POLL_SECONDS = 0.2


@dataclass(frozen=True)
class _Holder:
    """The backend holding a stream's lock, and the amp load it says it serves."""

    backend_pid: int
    application: str | None
    client: str | None
    owner: Owner | None

    def describe(self) -> str:
        who = self.owner.describe() if self.owner is not None else "not an amp load we know"
        where = f"PostgreSQL backend PID {self.backend_pid}"
        if self.application:
            where += f", application {self.application!r}"
        if self.client:
            where += f", client {self.client}"
        return f"{who}; {where}"


class PgStreamLock:
    """The advisory lock of one stream on one PostgreSQL database (schema-qualified)."""

    def __init__(self, stream: Stream, schema: str, destination: str) -> None:
        self.stream = stream
        self.schema = schema
        self.destination = destination
        self.key = stream.lock_key("postgresql")
        self.owner = Owner.here()

    def acquire(self, conn: psycopg.Connection[Any], wait: float) -> None:
        """Take the lock on ``conn``'s session and record the owner, or raise
        StreamOwnedError. Waits (up to ``wait`` seconds) only while the holder may be
        ending: a crashed process of this host, or a holder not identified yet. Real
        time, whatever clock the loader's retries use: it waits for another process."""
        clock = SystemClock()
        deadline = clock.monotonic() + wait
        while True:
            if self._try(conn):
                self._record_owner(conn)
                return
            holder = self._holder(conn)
            owner = holder.owner if holder is not None else None
            if holder is not None and owner is not None and owner.token == self.owner.token:
                self._end_own_stale_session(conn, holder)  # our own earlier session
                continue
            ending = owner is None or owner.is_gone
            if not ending or clock.monotonic() >= deadline:
                raise self._refusal(holder)
            clock.sleep(_POLL_SECONDS)

    def release(self, conn: psycopg.Connection[Any] | None) -> None:
        """Unlock and forget the owner row; a closed session has released it already."""
        if conn is None or conn.closed or conn.broken:
            return
        with contextlib.suppress(psycopg.Error):
            conn.rollback()
            with conn.cursor() as cur:
                cur.execute(
                    sql.SQL("DELETE FROM {} WHERE lock_key = %s AND backend_pid = %s").format(
                        self._owners_table()
                    ),
                    (self.key, conn.info.backend_pid),
                )
            conn.commit()
        with contextlib.suppress(psycopg.Error):
            conn.rollback()
            with conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
            conn.commit()

    # -- steps ---------------------------------------------------------------------------

    def _owners_table(self) -> sql.Composed:
        return sql.SQL(".").join([sql.Identifier(self.schema), sql.Identifier(OWNERS_TABLE)])

    def _try(self, conn: psycopg.Connection[Any]) -> bool:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_try_advisory_lock(%s)", (self.key,))
            row = cur.fetchone()
        conn.commit()  # the session lock outlives the transaction; leave the session idle
        return bool(row and row[0])

    def _record_owner(self, conn: psycopg.Connection[Any]) -> None:
        create = sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (lock_key BIGINT PRIMARY KEY, "
            "connection_name TEXT NOT NULL, table_name TEXT NOT NULL, worker_id INT NOT NULL, "
            "owner TEXT NOT NULL, backend_pid INT NOT NULL, "
            "claimed_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        ).format(self._owners_table())
        upsert = sql.SQL(
            "INSERT INTO {} (lock_key, connection_name, table_name, worker_id, owner, "
            "backend_pid) VALUES (%s, %s, %s, %s, %s, pg_backend_pid()) "
            "ON CONFLICT (lock_key) DO UPDATE SET owner = excluded.owner, "
            "backend_pid = excluded.backend_pid, claimed_at = now()"
        ).format(self._owners_table())
        values = (
            self.key,
            self.stream.connection,
            self.stream.table,
            self.stream.worker,
            self.owner.to_json(),
        )
        for attempt in (1, 2):  # two first-ever claims may race to create the table
            try:
                with conn.cursor() as cur:
                    cur.execute(create)
                    cur.execute(upsert, values)
                conn.commit()
                return
            except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateTable):
                conn.rollback()
                if attempt == 2:
                    raise

    def _holder(self, conn: psycopg.Connection[Any]) -> _Holder | None:
        unsigned = self.key & 0xFFFF_FFFF_FFFF_FFFF
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT l.pid, a.application_name, "
                    "host(a.client_addr) || ':' || a.client_port "
                    "FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
                    "AND l.classid::bigint = %s AND l.objid::bigint = %s "
                    "AND l.database = (SELECT oid FROM pg_database "
                    "WHERE datname = current_database())",
                    (unsigned >> 32, unsigned & 0xFFFF_FFFF),
                )
                row = cur.fetchone()
                if row is None:
                    return None
                owner = None
                cur.execute("SELECT to_regclass(%s)", (f'"{self.schema}"."{OWNERS_TABLE}"',))
                exists = cur.fetchone()
                if exists and exists[0] is not None:
                    cur.execute(
                        sql.SQL(
                            "SELECT owner FROM {} WHERE lock_key = %s AND backend_pid = %s"
                        ).format(self._owners_table()),
                        (self.key, row[0]),
                    )
                    found = cur.fetchone()
                    owner = Owner.from_json(found[0]) if found else None
            return _Holder(int(row[0]), row[1], row[2], owner)
        finally:
            conn.commit()

    def _end_own_stale_session(self, conn: psycopg.Connection[Any], holder: _Holder) -> None:
        """This process's previous session (dropped on our side, not yet on the server's)
        still holds the lock: this process no longer writes through it, so end it."""
        log.info(
            "Ending this load's previous PostgreSQL session (backend %d) that still holds "
            "the lock of %s",
            holder.backend_pid,
            self.stream.describe(),
        )
        with conn.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s, 5000)", (holder.backend_pid,))
        conn.commit()

    def _refusal(self, holder: _Holder | None) -> StreamOwnedError:
        if holder is None:
            return owned_error(self.stream, self.destination, "its holder just ended; start again")
        return owned_error(
            self.stream,
            self.destination,
            holder.describe(),
            "If that load is gone but its session is not, end the session: "
            f"SELECT pg_terminate_backend({holder.backend_pid}).",
        )
