"""The public entry point: ``Client``, its named connections and its query builder.

from amp.client import Client

client = Client("grpc://localhost:1602")
client.configure_connection(name="pg", loader="postgresql", config={...})
for result in client.sql("SELECT * FROM eth_firehose.logs").load(
    connection="pg", destination="logs", stream=True
):
    print(result.rows_loaded)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import pyarrow as pa

from amp import redact, sqltext
from amp.config import check_keys, suggest, typed
from amp.connection import ConnectionSettings
from amp.deadpeer import DEFAULT_DEAD_PEER_TIMEOUT
from amp.errors import ConfigError
from amp.flight.transport import FlightTransport
from amp.loaders import LOADERS, DataLoader, LoadMode, describe_destination
from amp.loop import Delivery, StreamingLoad, batch_load
from amp.loop.parallel import Executor, ParallelLoad, ParallelRun, PartitionState, ThreadExecutor
from amp.streaming.parallel import ParallelConfig
from amp.streaming.reader import batch_events
from amp.streaming.resilience import Edge
from amp.streaming.results import LoadResult

__all__ = ["Client", "LoadResult", "LoadRun", "QueryBuilder"]

LOAD_OPTIONS = frozenset({"mode"})

log = logging.getLogger("amp.client")


class QueryBuilder:
    """A query bound to a client: run it as a table, a batch stream, or a load."""

    def __init__(self, client: Client, query: str) -> None:
        if not isinstance(query, str) or not query.strip():
            raise ConfigError("the query must be a non-empty SQL string")
        self.client = client
        self.query = query

    def to_arrow(self) -> pa.Table:
        """Run as a batch query and return every row as one Arrow table."""
        stream = self.client.transport.execute(self.query, streaming=False)
        try:
            batches = [event.batch for event in batch_events(stream)]
        finally:
            stream.close()
        return pa.Table.from_batches(batches, schema=stream.schema)

    def stream(self) -> Iterator[pa.RecordBatch]:
        """The record batches of a batch query as they arrive."""
        stream = self.client.transport.execute(self.query, streaming=False)
        try:
            for event in batch_events(stream):
                yield event.batch
        finally:
            stream.close()

    def _streaming_sql(self) -> tuple[str, bool | None]:
        """The query to stream, and the ``amp-stream`` header when SQL cannot say it.

        ``SETTINGS stream = true`` is appended only when the query has no SETTINGS clause;
        a query with other settings gets the header instead (never a second clause).
        """
        clause = sqltext.trailing_settings(self.query)
        if clause is None:
            return sqltext.with_streaming(self.query), None
        return self.query, None if clause.stream else True

    def load(
        self,
        connection: str,
        destination: str,
        stream: bool = False,
        parallel_config: Any = None,
        **options: Any,
    ) -> LoadRun:
        """Load the results into ``destination`` (a table) of a configured connection.

        ``stream=False`` loads a batch query in one transaction; ``stream=True`` streams
        microbatches until the caller stops iterating (or Ctrl-C), one result each.
        Options: ``mode`` ('append' or 'overwrite').
        """
        check_keys("load options", options, LOAD_OPTIONS)
        typed("load()", "destination", destination, str)
        mode_name = options.get("mode", "append")
        try:
            mode = LoadMode(mode_name)
        except ValueError:
            raise ConfigError(
                f"load option mode must be 'append' or 'overwrite', got {mode_name!r}"
            ) from None
        loader = self.client._get_loader(connection)
        server_edge = self.client.server_edge(connection)
        if mode is LoadMode.OVERWRITE and not loader.can_overwrite:
            # Refused before anything runs: an overwrite first clears the load's state.
            raise ConfigError(
                f"mode='overwrite' is not possible with the {loader.loader_type} loader: it "
                "cannot delete what it wrote; load with mode='append' into a new destination"
            )
        # Said before anything runs: a config that leaves host or database to defaults
        # must not write somewhere unseen (libpq's default database is the OS user's name).
        log.info("%s", describe_destination(loader, destination))
        limits = loader.delivery_limits()
        if limits is not None:
            log.warning("%s", limits)
        if parallel_config is not None:
            return self._parallel_load(connection, destination, mode, parallel_config, stream)
        if not stream:
            stop = threading.Event()
            return LoadRun(
                batch_load(
                    self.client.transport,
                    loader,
                    destination,
                    self.query,
                    mode,
                    stop,
                    server_edge=server_edge,
                ),
                stop,
            )
        sql, header = self._streaming_sql()
        delivery = Delivery(
            loader, destination, loader.checkpoint_config, loader.idempotency_config
        )
        load = StreamingLoad(
            self.client.transport,
            loader,
            destination,
            sql,
            mode=mode,
            streaming_header=header,
            delivery=delivery,
            server_edge=server_edge,
            grouping=self.client._settings[connection].grouping,
        )
        return LoadRun(_closing(load, loader), load.stop_event)

    def _parallel_load(
        self,
        connection: str,
        destination: str,
        mode: LoadMode,
        config: ParallelConfig,
        stream: bool,
    ) -> LoadRun:
        """Workers with a loader each; the connection's own loader is worker 0's, so its
        ``circuit_breaker`` is the breaker all of them share (the guide's monitoring)."""
        if not isinstance(config, ParallelConfig):
            raise ConfigError(
                "parallel_config must be an amp.streaming.parallel.ParallelConfig, got "
                f"{type(config).__name__}"
            )
        if not stream:
            raise ConfigError(
                "parallel_config needs stream=True: a parallel load streams each partition "
                "(and live blocks after them); pass stream=True"
            )
        client = self.client
        primary = client._get_loader(connection)
        if primary.private:
            raise ConfigError(
                f"connection {connection!r} writes to a database only its own connection "
                "sees (in-memory), which parallel workers cannot share; use a database file"
            )
        primary.check_parallel_writers()
        if config.on_cluster and primary.one_writing_process:
            raise ConfigError(
                f"connection {connection!r} writes with {primary.loader_type}, which lets one "
                "process at a time write its database file, and a Dask cluster's workers are "
                "other processes: use executor='threads' (workers in this process) or a "
                "destination that takes many writers (PostgreSQL, Redis, Kafka)"
            )
        base = client._settings[connection]
        settings = base.for_parallel(config)
        server_edge = client.server_edge(connection)
        previous = primary.edge
        if settings is not base:  # this load's own edges, with the overrides
            resilience = settings.resilience
            server_edge = Edge(f"server {client.url}", resilience)
            primary.configure_resilience(resilience, edge=Edge(previous.name, resilience))
        loaders: dict[int, DataLoader[Any]] = {0: primary}
        lock = threading.Lock()

        def loader_for(worker: int) -> DataLoader[Any]:
            with lock:
                if worker not in loaders:
                    loaders[worker] = settings.build(connection, primary.edge)
                return loaders[worker]

        sql, header = self._streaming_sql()
        run = ParallelRun(
            transport=client.transport,
            table=destination,
            sql=sql,
            header=header,
            config=config,
            grouping=settings.grouping,
            server_edge=server_edge,
            stop_event=threading.Event(),
            loaders=loader_for,
        )
        load = ParallelLoad(run, mode, self._executor(connection, settings, config))

        def results() -> Iterator[LoadResult]:
            try:
                yield from load.results()
            finally:
                for loader in loaders.values():
                    loader.close()
                if primary.edge is not previous:
                    primary.configure_resilience(base.resilience, edge=previous)

        return LoadRun(results(), run.stop_event, partitions=run.states)

    def _executor(
        self, connection: str, settings: ConnectionSettings, config: ParallelConfig
    ) -> Executor:
        """Worker threads here, or tasks on the Dask cluster ``config.executor`` names."""
        if not config.on_cluster:
            return ThreadExecutor()
        from amp.cluster.executor import DaskExecutor, TaskTemplate

        client = self.client
        loader, raw = client._connections[connection]
        template = TaskTemplate(
            server_url=client.url,
            auth_token=client._auth_token,
            dead_peer_timeout=client.transport.dead_peer_timeout,
            connection=connection,
            loader=loader,
            loader_module=settings.cls.__module__,
            connection_config=dict(raw),
            max_attempts=settings.resilience.retry.max_retries + 1,
        )
        return DaskExecutor(config.executor, template)


class LoadRun(Iterator[LoadResult]):
    """The results of a load, as an iterator, plus ``stop()``.

    ``stop()`` may be called from another thread or a signal handler: a streaming load
    ends at the next microbatch boundary (or at once while it waits for blocks); a batch
    load ends before its next batch and rolls back. ``close()`` ends it at once.
    """

    def __init__(
        self,
        results: Iterator[LoadResult],
        stop_event: threading.Event,
        partitions: dict[int, PartitionState] | None = None,
    ) -> None:
        self._results = results
        self._stop_event = stop_event
        # A parallel load's partitions by worker id, as the workers update them.
        self.partitions = partitions

    def __iter__(self) -> LoadRun:
        return self

    def __next__(self) -> LoadResult:
        return next(self._results)

    def stop(self) -> None:
        self._stop_event.set()

    def close(self) -> None:
        close = getattr(self._results, "close", None)
        if close is not None:
            close()


def _closing(load: StreamingLoad, loader: DataLoader[Any]) -> Iterator[LoadResult]:
    """Run a streaming load; whatever ends it, close the stream and the destination."""
    try:
        yield from load.results()
    finally:
        loader.close()


class Client:
    """A client of one Amp server, with named destination connections."""

    def __init__(
        self,
        url: str | None = None,
        auth_token: str | None = None,
        *,
        dead_peer_timeout: float | None = DEFAULT_DEAD_PEER_TIMEOUT,
        **kwargs: Any,
    ) -> None:
        """``dead_peer_timeout``: seconds within which a silent (black-holed) connection
        to the server is noticed, through gRPC keepalive pings, and retried as
        UNAVAILABLE; None sends no pings (for a server that refuses them)."""
        if kwargs:
            raise ConfigError(
                f"unknown Client argument(s) {', '.join(sorted(kwargs))}; "
                "Client takes url, auth_token and dead_peer_timeout"
            )
        if url is None:
            raise ConfigError("Client needs the server URL, e.g. Client('grpc://localhost:1602')")
        typed("Client()", "url", url, str)
        # Credentials in the URL (grpc://user:token@host, or grpc://token@host) are the
        # bearer token; the URL kept and shown everywhere has none, so no message leaks it.
        url, url_user, url_password = redact.strip_userinfo(url)
        url_token = url_password if url_password is not None else url_user
        if url_token is not None and auth_token is not None and url_token != auth_token:
            raise ConfigError(
                "the server URL carries a token and auth_token gives another one; "
                "give the token once, as auth_token"
            )
        self.url = url
        # The token as given (not one read from AMP_AUTH_TOKEN): what a Dask task gets.
        self._auth_token = auth_token if auth_token is not None else url_token
        self.transport = FlightTransport(url, self._auth_token, dead_peer_timeout)
        self._connections: dict[str, tuple[str, dict[str, Any]]] = {}
        self._loaders: dict[str, DataLoader[Any]] = {}
        self._server_edges: dict[str, Edge] = {}
        self._settings: dict[str, ConnectionSettings] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    def configure_connection(self, name: str, loader: str, config: Mapping[str, Any]) -> None:
        """Register a destination as ``name``; the configuration is checked now, the
        connection is opened when a load first uses it."""
        typed("configure_connection()", "name", name, str)
        settings = ConnectionSettings.parse(name, loader, config)
        instance = settings.build(name)
        with self._lock:
            previous = self._loaders.pop(name, None)
            self._connections[name] = (loader, dict(config))
            self._settings[name] = settings
            self._loaders[name] = instance
            # The server edge of this connection's loads: its own breaker, so a server
            # outage never opens the destination's.
            self._server_edges[name] = Edge(f"server {self.url}", settings.resilience)
        if previous is not None:
            previous.close()

    def list_connections(self) -> dict[str, str]:
        """Connection name → loader name."""
        return {name: loader for name, (loader, _) in self._connections.items()}

    def get_available_loaders(self) -> list[str]:
        return sorted(LOADERS)

    def server_edge(self, connection: str) -> Edge:
        """The server edge of a connection's loads (its breaker, for monitoring)."""
        self._get_loader(connection)  # a clear error for an unknown name
        return self._server_edges[connection]

    def sql(self, query: str) -> QueryBuilder:
        return QueryBuilder(self, query)

    def _get_loader(self, name: str) -> DataLoader[Any]:
        """The live loader of connection ``name`` (the guide's monitoring example uses it)."""
        try:
            return self._loaders[name]
        except KeyError:
            known = ", ".join(sorted(self._loaders)) or "none yet"
            raise ConfigError(
                f"unknown connection {name!r}{suggest(str(name), self._loaders)}; configured "
                f"connections: {known}. Add it with "
                "client.configure_connection(name, loader, config)"
            ) from None

    def close(self) -> None:
        for loader in self._loaders.values():
            loader.close()
        self.transport.close()
