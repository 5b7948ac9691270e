"""One writer per stream of an Iceberg table: a lock in the catalog's own home.

Why not in the table: Iceberg offers optimistic commits only, and a property written by
a second load would not stop the first one's next commit. The lock therefore lives next
to the catalog, held for as long as the load runs and released by the operating system
or the database when the process dies (a SIGKILLed load never leaves a stale claim):

- SQL catalog on SQLite (``sqlite:////dir/catalog.db``): an exclusive ``flock`` on a
  file ``catalog.db.amp-stream-<hash>.lock`` beside the database; the holder writes who
  it is into it, so a refused load names host, PID and start time.
- SQL catalog on PostgreSQL: a session advisory lock in the catalog's database (the one
  the PostgreSQL loader takes, under a key of its own, see ``amp.loaders.pg_stream_lock``).
- any other catalog (REST, Glue, Hive, ...): only loaders of this process are fenced;
  two processes loading one stream are not detected (docs/loaders.md says so). The
  commits stay atomic, and each unit's blocks are deleted before its rows are appended,
  so such a pair cannot duplicate rows, but their checkpoints may overtake each other.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from pathlib import Path
from typing import Any

from amp.errors import DestinationError
from amp.loaders.ownership import PROCESS_CLAIMS, Owner, Stream, owned_error
from amp.redact import redact_text

log = logging.getLogger("amp.loaders.iceberg.loader")


class _FileLock:
    """An exclusive ``flock`` held through an open file descriptor."""

    def __init__(self, path: Path, stream: Stream, destination: str) -> None:
        self.path = path
        self.stream = stream
        self.destination = destination
        self.fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0)
            os.close(fd)
            owner = Owner.from_json(holder or None)
            raise owned_error(
                self.stream,
                self.destination,
                owner.describe() if owner is not None else f"the holder of {self.path}",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, Owner.here().to_json().encode(), 0)
        self.fd = fd

    def release(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            with contextlib.suppress(OSError):
                os.close(fd)  # closing the descriptor releases the flock


class _PgLock:
    """The PostgreSQL loader's advisory lock, on a session of its own."""

    def __init__(self, dsn: str, stream: Stream, destination: str) -> None:
        from amp.loaders.pg_stream_lock import PgStreamLock

        self.dsn = dsn
        self.lock = PgStreamLock(stream, "public", destination)
        self.conn: Any = None

    def acquire(self) -> None:
        import psycopg

        from amp.loaders.pg_stream_lock import CLAIM_WAIT_SECONDS

        try:
            self.conn = psycopg.connect(self.dsn, autocommit=False, connect_timeout=30)
        except psycopg.Error as exc:
            raise DestinationError(
                f"cannot reach the Iceberg catalog's PostgreSQL to claim the stream: "
                f"{redact_text(str(exc))}"
            ) from exc
        try:
            self.lock.acquire(self.conn, CLAIM_WAIT_SECONDS)
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            self.lock.release(conn)
            with contextlib.suppress(Exception):
                conn.close()


def sqlite_path(uri: str) -> Path | None:
    """The database file of a SQLite SQLAlchemy URI (None for another database)."""
    from sqlalchemy.engine import make_url

    url = make_url(uri)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database).resolve()


def _pg_dsn(uri: str) -> str | None:
    from sqlalchemy.engine import make_url

    url = make_url(uri)
    if url.get_backend_name() != "postgresql":
        return None
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


class StreamClaims:
    """The claims one loader holds (see the module docstring)."""

    def __init__(self, sql_uri: str | None, destination: str) -> None:
        self.sql_uri = sql_uri
        self.destination = destination
        self._held: dict[Stream, _FileLock | _PgLock | None] = {}
        self._warned = False

    def claim(self, stream: Stream, identifier: tuple[str, ...], holder: object) -> None:
        if stream in self._held:
            return
        scope = (self.sql_uri or self.destination, ".".join(identifier), stream.worker)
        PROCESS_CLAIMS.claim(("iceberg", *scope), stream, holder, self.destination)
        lock = self._lock_for(stream, identifier)
        if lock is not None:
            try:
                lock.acquire()
            except BaseException:
                PROCESS_CLAIMS.release(holder)
                for other in self._held.values():
                    if other is not None:
                        other.release()
                self._held.clear()
                raise
        self._held[stream] = lock

    def _lock_for(self, stream: Stream, identifier: tuple[str, ...]) -> _FileLock | _PgLock | None:
        # The lock key names the table by its identifier, so loaders with different
        # default namespaces that write one table still meet on one lock.
        keyed = Stream(f"iceberg:{stream.connection}", ".".join(identifier), stream.worker)
        if self.sql_uri is not None:
            database = sqlite_path(self.sql_uri)
            if database is not None:
                digest = f"{keyed.lock_key('iceberg') & 0xFFFF_FFFF_FFFF_FFFF:016x}"
                path = database.with_name(f"{database.name}.amp-stream-{digest}.lock")
                return _FileLock(path, stream, self.destination)
            dsn = _pg_dsn(self.sql_uri)
            if dsn is not None:
                return _PgLock(dsn, keyed, self.destination)
        if not self._warned:
            self._warned = True
            log.warning(
                "%s: this catalog offers amp no lock, so only loaders of this process are "
                "kept from loading one stream twice; run one load per stream (see "
                "docs/loaders.md, Iceberg)",
                self.destination,
            )
        return None

    def release_all(self, holder: object) -> None:
        held, self._held = self._held, {}
        for lock in held.values():
            if lock is not None:
                lock.release()
        PROCESS_CLAIMS.release(holder)
