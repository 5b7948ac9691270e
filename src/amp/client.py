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

import threading
from collections.abc import Iterator, Mapping
from typing import Any

import pyarrow as pa

from amp import sqltext
from amp.config import check_keys, suggest, typed
from amp.errors import ConfigError
from amp.flight.transport import FlightTransport
from amp.loaders import LOADERS, Loader, LoadMode, loader_class
from amp.streaming.checkpoint import CheckpointConfig
from amp.streaming.delivery import Delivery
from amp.streaming.idempotency import IdempotencyConfig
from amp.streaming.pipeline import LoadResult, StreamingLoad, batch_load
from amp.streaming.reader import batch_events
from amp.streaming.resilience import ResilienceConfig

__all__ = ["Client", "LoadResult", "LoadRun", "QueryBuilder"]

# Keys every connection accepts besides its loader's own (amp's delivery features).
COMMON_KEYS = frozenset({"resilience", "checkpoint", "idempotency"})
LOAD_OPTIONS = frozenset({"mode"})


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
        body, settings = sqltext.split_settings(self.query)
        if body == self.query:
            return sqltext.with_streaming(self.query), None
        if sqltext.requests_streaming(settings):
            return self.query, None
        return self.query, True

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
        if parallel_config is not None:
            raise ConfigError("parallel_config is not supported yet; load without it")
        loader = self.client._get_loader(connection)
        if mode is LoadMode.OVERWRITE and not loader.supports_overwrite:
            # Refused before anything runs: an overwrite first clears the load's state.
            raise ConfigError(
                f"mode='overwrite' is not possible with the {loader.loader_type} loader: it "
                "cannot delete what it wrote; load with mode='append' into a new destination"
            )
        if not stream:
            stop = threading.Event()
            return LoadRun(
                batch_load(self.client.transport, loader, destination, self.query, mode, stop),
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
        )
        return LoadRun(_closing(load, loader), load.stop_event)


class LoadRun(Iterator[LoadResult]):
    """The results of a load, as an iterator, plus ``stop()``.

    ``stop()`` may be called from another thread or a signal handler: a streaming load
    ends at the next microbatch boundary (or at once while it waits for blocks); a batch
    load ends before its next batch and rolls back. ``close()`` ends it at once.
    """

    def __init__(self, results: Iterator[LoadResult], stop_event: threading.Event) -> None:
        self._results = results
        self._stop_event = stop_event

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


def _closing(load: StreamingLoad, loader: Loader) -> Iterator[LoadResult]:
    """Run a streaming load; whatever ends it, close the stream and the destination."""
    try:
        yield from load.results()
    finally:
        loader.close()


class Client:
    """A client of one Amp server, with named destination connections."""

    def __init__(
        self, url: str | None = None, auth_token: str | None = None, **kwargs: Any
    ) -> None:
        if kwargs:
            raise ConfigError(
                f"unknown Client argument(s) {', '.join(sorted(kwargs))}; "
                "Client takes url and auth_token"
            )
        if url is None:
            raise ConfigError("Client needs the server URL, e.g. Client('grpc://localhost:1602')")
        self.url = url
        self.transport = FlightTransport(url, auth_token)
        self._connections: dict[str, tuple[str, dict[str, Any]]] = {}
        self._loaders: dict[str, Loader] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    def configure_connection(self, name: str, loader: str, config: Mapping[str, Any]) -> None:
        """Register a destination as ``name``; the configuration is checked now, the
        connection is opened when a load first uses it."""
        typed("configure_connection()", "name", name, str)
        cls = loader_class(loader)
        if not isinstance(config, Mapping):
            raise ConfigError(f"config for {name!r} must be a dict, got {type(config).__name__}")
        check_keys(f"{loader} config", config, cls.config_keys | COMMON_KEYS)
        own = {key: value for key, value in config.items() if key not in COMMON_KEYS}
        resilience = ResilienceConfig.from_dict(config.get("resilience"))
        checkpoint = CheckpointConfig.from_dict(config.get("checkpoint"))
        idempotency = IdempotencyConfig.from_dict(config.get("idempotency"))
        instance = cls(own, connection_name=name)
        instance.configure_resilience(resilience)
        instance.checkpoint_config = checkpoint
        instance.idempotency_config = idempotency
        if (checkpoint.enabled or idempotency.enabled) and not hasattr(instance, "state_store"):
            raise ConfigError(
                f"the {loader} loader cannot keep checkpoints or processed ranges in its "
                "destination yet; disable 'checkpoint' and 'idempotency' for it"
            )
        with self._lock:
            previous = self._loaders.pop(name, None)
            self._connections[name] = (loader, dict(config))
            self._loaders[name] = instance
        if previous is not None:
            previous.close()

    def list_connections(self) -> dict[str, str]:
        """Connection name → loader name."""
        return {name: loader for name, (loader, _) in self._connections.items()}

    def get_available_loaders(self) -> list[str]:
        return sorted(LOADERS)

    def sql(self, query: str) -> QueryBuilder:
        return QueryBuilder(self, query)

    def _get_loader(self, name: str) -> Loader:
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
