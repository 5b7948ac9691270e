"""Helpers of the fault-injection suite: configs, destinations, oracle checks, a TCP proxy.

Everything here talks to real services: PostgreSQL at 127.0.0.1:5432, DuckDB files in
``tmp_path``, the dev server in-process. Faults are driven from the results loop or from
logging handlers, never by sleeping.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import socket
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import duckdb
import psycopg
import pyarrow.compute as pc

from amp.client import Client, LoadResult
from amp.devserver import DevServer
from amp.errors import FatalLoadError

PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_DSN = f"host={PG_HOST} port={PG_PORT} dbname=test user=postgres"
QUERY = "SELECT * FROM eth_firehose.logs"
RESILIENCE_LOGGER = "amp.streaming.resilience"
# The longest a single load may run before the watchdog stops it (a safety net: the
# test then fails on "never caught up", it does not hang).
WATCHDOG_SECONDS = 20.0

Key = tuple[int, int, bytes]


def fast_resilience(
    *,
    max_retries: int = 5,
    circuit_breaker: Mapping[str, Any] | None = None,
    back_pressure: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Resilience settings that keep every backoff and adaptive delay in milliseconds."""
    return {
        "retry": {
            "initial_backoff_ms": 5,
            "max_backoff_ms": 50,
            "jitter": False,
            "max_retries": max_retries,
        },
        "circuit_breaker": dict(circuit_breaker or {"timeout_ms": 50}),
        "back_pressure": dict(back_pressure or {"max_delay_ms": 50}),
    }


# -- destinations -------------------------------------------------------------------------


@dataclass
class Destination:
    """One real destination (PostgreSQL or a DuckDB file) and how to read its tables."""

    kind: str
    duckdb_path: str = ""
    pg_admin: psycopg.Connection[Any] | None = None
    created: list[str] = field(default_factory=list)

    def new_table(self, prefix: str = "faults") -> str:
        """A unique table name, dropped (PostgreSQL) when the test ends."""
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        self.created.append(name)
        return name

    def connection_config(self, resilience: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
        if self.kind == "postgresql":
            config: dict[str, Any] = {"dsn": PG_DSN}
        else:
            config = {"database": self.duckdb_path}
        config.update(extra)
        config["resilience"] = dict(resilience)
        return config

    def configure(
        self, client: Client, name: str, resilience: Mapping[str, Any], **extra: Any
    ) -> None:
        client.configure_connection(name, self.kind, self.connection_config(resilience, **extra))

    def keys(self, table: str, client: Client | None = None, name: str = "") -> list[Key]:
        """Every committed row of ``table`` as (block_num, log_index, block_hash).

        For DuckDB, while a load runs, pass the client and connection name: the rows are
        read through a second connection of the loader's own database instance.
        """
        if self.kind == "postgresql":
            assert self.pg_admin is not None
            rows = self.pg_admin.execute(
                f'SELECT block_num::bigint, log_index::bigint, block_hash FROM "{table}"'
            ).fetchall()
            return [(int(b), int(i), bytes(h)) for b, i, h in rows]
        statement = f'SELECT block_num, log_index, block_hash FROM "{table}"'
        if client is not None:
            loader = client._get_loader(name)
            if loader.connected:
                cursor = loader.connection.cursor()  # type: ignore[attr-defined]
                try:
                    rows = cursor.execute(statement).fetchall()
                finally:
                    cursor.close()
                return [(int(b), int(i), bytes(h)) for b, i, h in rows]
        with duckdb.connect(self.duckdb_path) as conn:
            rows = conn.execute(statement).fetchall()
        return [(int(b), int(i), bytes(h)) for b, i, h in rows]

    def count(self, table: str, client: Client | None = None, name: str = "") -> int:
        return len(self.keys(table, client, name))

    def exists(self, table: str) -> bool:
        if self.kind == "postgresql":
            assert self.pg_admin is not None
            row = self.pg_admin.execute("SELECT to_regclass(%s)", (f'public."{table}"',))
            return row.fetchone()[0] is not None  # type: ignore[index]
        with duckdb.connect(self.duckdb_path) as conn:
            found = conn.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", (table,)
            ).fetchone()
        return bool(found and found[0])


def add_check_constraint(
    destination: Destination, client: Client, connection: str, table: str, below: int
) -> None:
    """From now on rows of block ``below`` and later violate a CHECK constraint (a
    permanent destination error); the rows already there satisfy it."""
    if destination.kind == "postgresql":
        assert destination.pg_admin is not None
        destination.pg_admin.execute(
            f'ALTER TABLE "{table}" ADD CONSTRAINT only_early CHECK (block_num < {below})'
        )
        return
    # DuckDB cannot add a CHECK constraint to a table: rebuild it with one, through the
    # loader's own connection (between transactions).
    conn: Any = client._get_loader(connection).connection
    columns = conn.execute(f'DESCRIBE "{table}"').fetchall()
    definition = ", ".join(f'"{name}" {kind}' for name, kind, *_ in columns)
    conn.execute(f'CREATE TABLE "{table}_new" ({definition}, CHECK (block_num < {below}))')
    conn.execute(f'INSERT INTO "{table}_new" SELECT * FROM "{table}"')
    conn.execute(f'DROP TABLE "{table}"')
    conn.execute(f'ALTER TABLE "{table}_new" RENAME TO "{table}"')


TERMINATE_SELF = "PERFORM pg_terminate_backend(pg_backend_pid())"
SERIALIZATION_FAILURE = "RAISE EXCEPTION 'injected conflict' USING ERRCODE = '40001'"


class FailOnce:
    """A PostgreSQL row trigger on ``table`` that runs ``action`` (say, terminating its own
    backend) once, at the first row of block ``block``. A sequence counts the firings:
    sequences are not transactional, so the rollback that follows does not re-arm it."""

    def __init__(self, admin: psycopg.Connection[Any], table: str, block: int, action: str) -> None:
        self.admin = admin
        self.table = table
        self.block = block
        self.action = action
        self.sequence = f"{table}_seq"
        self.function = f"{table}_fail"

    def arm(self) -> None:
        self.admin.execute(f'CREATE SEQUENCE "{self.sequence}"')
        self.admin.execute(
            f'CREATE FUNCTION "{self.function}"() RETURNS trigger LANGUAGE plpgsql AS $$ '
            f"BEGIN IF NEW.block_num = {self.block} AND nextval('\"{self.sequence}\"') = 1 "
            f"THEN {self.action}; END IF; RETURN NEW; END $$"
        )
        self.admin.execute(
            f'CREATE TRIGGER fail_once BEFORE INSERT ON "{self.table}" '
            f'FOR EACH ROW EXECUTE FUNCTION "{self.function}"()'
        )

    def fired(self) -> bool:
        row = self.admin.execute(f'SELECT is_called FROM "{self.sequence}"').fetchone()
        return bool(row and row[0])

    def disarm(self) -> None:
        self.admin.execute(f'DROP FUNCTION IF EXISTS "{self.function}"() CASCADE')
        self.admin.execute(f'DROP SEQUENCE IF EXISTS "{self.sequence}"')


# -- the oracle -----------------------------------------------------------------------------


def oracle_keys(srv: DevServer, start: int | None = None, end: int | None = None) -> list[Key]:
    """(block_num, log_index, block_hash) of the canonical logs, optionally of a range."""
    table = srv.chain.canonical_table("logs")
    if start is not None and end is not None:
        block = table.column("block_num")
        mask = pc.and_(pc.greater_equal(block, start), pc.less_equal(block, end))
        table = table.filter(mask)
    data = table.select(["block_num", "log_index", "block_hash"]).to_pydict()
    return list(zip(data["block_num"], data["log_index"], data["block_hash"], strict=True))


def assert_equals_chain(destination: Destination, table: str, srv: DevServer) -> None:
    """Exact row count, no duplicate (block_num, log_index), same key set as the chain."""
    expected = oracle_keys(srv)
    assert len({(b, i) for b, i, _ in expected}) == len(expected), "oracle has duplicate keys"
    actual = destination.keys(table)
    duplicates = len(actual) - len({(b, i) for b, i, _ in actual})
    assert duplicates == 0, f"{duplicates} duplicate (block_num, log_index) rows in {table}"
    assert len(actual) == len(expected), (
        f"{table} holds {len(actual)} rows, the chain {len(expected)} "
        f"(missing {len(set(expected) - set(actual))}, extra {len(set(actual) - set(expected))})"
    )
    assert set(actual) == set(expected), "row keys or block hashes differ from the chain"


def microbatch_message_layout(srv: DevServer, max_interval: int, per_message: int) -> list[int]:
    """FlightData messages of each microbatch of a fresh ``SELECT *`` logs stream: the
    data messages (``per_message`` rows each) plus the ``ranges_complete`` marker."""
    layout = []
    first, head = srv.chain.first_block, srv.chain.head
    for start in range(first, head + 1, max_interval):
        rows = len(oracle_keys(srv, start, min(head, start + max_interval - 1)))
        layout.append(-(-rows // per_message) + 1)
    return layout


# -- driving a streaming load ----------------------------------------------------------------


def range_of(result: LoadResult) -> dict[str, Any]:
    return result.metadata["block_ranges"][0]


def collect(
    run: Any,
    srv: DevServer,
    on_result: Callable[[LoadResult], None] | None = None,
) -> tuple[list[LoadResult], BaseException | None]:
    """Iterate a streaming load until a microbatch ends at the chain head, then stop it;
    the results, and the exception that ended the iteration (None when it was stopped).

    A watchdog stops a load that never catches up, so a broken pipeline fails the test
    instead of hanging it.
    """
    results: list[LoadResult] = []
    timed_out = threading.Event()

    def watchdog() -> None:
        timed_out.set()
        run.stop()

    timer = threading.Timer(WATCHDOG_SECONDS, watchdog)
    timer.daemon = True
    timer.start()
    error: BaseException | None = None
    try:
        for result in run:
            results.append(result)
            if on_result is not None:
                on_result(result)
            ranges = result.metadata.get("block_ranges")
            if ranges and ranges[0]["end"] == srv.chain.head:
                run.stop()
    except Exception as exc:
        error = exc
    finally:
        timer.cancel()
        run.close()
    assert not timed_out.is_set(), (
        f"the load neither failed nor caught up with head {srv.chain.head} within "
        f"{WATCHDOG_SECONDS} s"
    )
    return results, error


def drive(
    run: Any,
    srv: DevServer,
    on_result: Callable[[LoadResult], None] | None = None,
) -> list[LoadResult]:
    """``collect`` a load that must succeed: any exception is re-raised."""
    results, error = collect(run, srv, on_result)
    if error is not None:
        raise error
    return results


def expect_fatal(run: Any, srv: DevServer, prefix: str) -> tuple[LoadResult, FatalLoadError]:
    """The load must end with one failed LoadResult whose error starts with ``prefix``,
    then raise FatalLoadError (a RuntimeError) with the same message."""
    results, error = collect(run, srv)
    loaded = sum(r.rows_loaded for r in results)
    assert isinstance(error, FatalLoadError), (
        f"expected FatalLoadError, got {error!r} after {len(results)} result(s) "
        f"({loaded} rows loaded)"
    )
    assert isinstance(error, RuntimeError)
    failed = [r for r in results if not r.success]
    assert len(failed) == 1 and results[-1] is failed[0], [r.metadata for r in results]
    result = failed[0]
    assert result.error is not None and result.error.startswith(prefix), result.error
    assert result.error == str(error)
    assert result.metadata.get("operation") == "fatal"
    return result, error


def assert_contiguous_loads(results: list[LoadResult], srv: DevServer) -> list[dict[str, Any]]:
    """The 'load' results cover first_block..head once: contiguous, non-overlapping."""
    loads = [r for r in results if r.metadata.get("operation") == "load"]
    others = [r.metadata for r in results if r.metadata.get("operation") != "load"]
    assert not others, f"unexpected results besides loads: {others}"
    assert all(r.success for r in loads)
    ranges = [range_of(r) for r in loads]
    assert ranges, "no microbatch was loaded"
    assert ranges[0]["start"] == srv.chain.first_block
    for previous, current in itertools.pairwise(ranges):
        assert current["start"] == previous["end"] + 1, f"{previous} then {current}"
    assert ranges[-1]["end"] == srv.chain.head
    return ranges


# -- logging triggers -------------------------------------------------------------------------


class LogTrigger(logging.Handler):
    """Runs ``action`` (once, or every time) when a record's message contains ``needle``.

    The action runs in the thread that logs, i.e. inside the retry loop, which is what
    lets a test change the world exactly between a failure and its retry.
    """

    def __init__(self, needle: str, action: Callable[[], None], once: bool = True) -> None:
        super().__init__(level=logging.DEBUG)
        self.needle = needle
        self.action = action
        self.once = once
        self.fired = 0
        self.errors: list[BaseException] = []

    def emit(self, record: logging.LogRecord) -> None:
        if self.needle not in record.getMessage() or (self.once and self.fired):
            return
        self.fired += 1
        try:
            self.action()
        except BaseException as exc:  # reported by the test, not swallowed
            self.errors.append(exc)


@contextlib.contextmanager
def log_trigger(
    needle: str, action: Callable[[], None], once: bool = True, logger: str = RESILIENCE_LOGGER
) -> Iterator[LogTrigger]:
    handler = LogTrigger(needle, action, once)
    target = logging.getLogger(logger)
    previous = target.level
    target.setLevel(logging.DEBUG)
    target.addHandler(handler)
    try:
        yield handler
    finally:
        target.removeHandler(handler)
        target.setLevel(previous)
    assert not handler.errors, f"trigger on {needle!r} failed: {handler.errors!r}"


def messages_of(records: list[logging.LogRecord], needle: str) -> list[str]:
    return [r.getMessage() for r in records if needle in r.getMessage()]


# -- a TCP proxy in front of PostgreSQL ------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class TcpProxy:
    """A real forwarding proxy 127.0.0.1:<port> → target, stoppable and restartable.

    ``stop()`` closes the listener and every proxied connection (both ends), so a
    client sees its connection drop and new connections refused; ``start()`` listens
    again on the same port.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self.accepted = 0

    @property
    def running(self) -> bool:
        return self._listener is not None

    def start(self) -> None:
        assert self._listener is None, "the proxy is already running"
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        self._spawn(self._accept_loop, listener)

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name="pg-proxy")
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # the listener was shut down
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:  # stopped meanwhile
                    client.close()
                    upstream.close()
                    return
                self._sockets.update((client, upstream))
                self.accepted += 1
            self._spawn(self._pump, client, upstream)
            self._spawn(self._pump, upstream, client)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        """Close the listener and every open connection; wait for the threads to end."""
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._sockets = self._sockets, set()
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        threads, self._threads = self._threads, []
        for thread in threads:
            thread.join(timeout=5)
        alive = [t for t in threads if t.is_alive()]
        assert not alive, f"{len(alive)} proxy thread(s) did not stop"
