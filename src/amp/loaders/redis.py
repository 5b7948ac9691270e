"""Redis loader: rows as hashes (or stream entries) under deterministic keys.

Why deterministic keys: Redis has no rollback, so exactly-once comes from writes that
can be repeated. A row's id is derived from its network, microbatch range, end hash and
position, so a replayed microbatch rewrites the same keys. Each microbatch's rows, their
block-index entries, its processed-range marker and checkpoint go out in one MULTI/EXEC,
which Redis applies all together or not at all.

Layout for table ``t`` (``data_structure='hash'``, the default)::

    t:<network>:<start>-<end>:<hash16>:<n>   a hash per row (null columns are omitted)
    t:_index                                  sorted set: row key → block number

With ``data_structure='stream'`` rows are entries of the stream ``t`` whose ids are
``<block>-<n>``, so a block range is an id range (reorgs delete exactly those entries).
"""

from __future__ import annotations

import contextlib
import json
import urllib.parse
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from amp.config import typed
from amp.errors import ConfigError, DestinationError
from amp.loaders.base import Loader, LoadMode
from amp.streaming.state import ProcessedRange
from amp.streaming.types import BlockRange

_STRUCTURES = ("hash", "stream")


def _value(value: Any) -> bytes | str | int | float:
    """A column value as Redis stores it (bytes stay bytes; the rest as text)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes | str | int | float):
        return value
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return json.dumps(value, default=str)


def _textual_times(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Temporal columns as ISO text computed by Arrow (exact to the nanosecond)."""
    temporal = [
        index for index, field in enumerate(batch.schema) if pa.types.is_temporal(field.type)
    ]
    if not temporal:
        return batch
    columns = [
        pc.cast(column, pa.string()) if index in temporal else column
        for index, column in enumerate(batch.columns)
    ]
    names = batch.schema.names
    return pa.RecordBatch.from_arrays(columns, names=names)


class RedisLoader(Loader):
    """Loads into Redis. Keys: host, port, db, password, username, url, data_structure
    ('hash' or 'stream'), socket_timeout."""

    loader_type = "redis"
    transactional = False
    config_keys = frozenset(
        {"host", "port", "db", "password", "username", "url", "data_structure", "socket_timeout"}
    )

    def __init__(self, config: dict[str, Any], connection_name: str = "") -> None:
        super().__init__(config, connection_name)
        where = "redis config"
        for key in ("host", "password", "username", "url"):
            if key in self.config:
                typed(where, key, self.config[key], str)
        for key in ("port", "db"):
            if key in self.config:
                typed(where, key, self.config[key], int)
        self.structure = self.config.get("data_structure", "hash")
        if self.structure not in _STRUCTURES:
            raise ConfigError(
                f"{where}['data_structure'] must be one of {', '.join(_STRUCTURES)}, "
                f"got {self.structure!r}"
            )
        self._client: redis.Redis | None = None
        self._pipe: Any = None
        self._state_pipe: Any = None
        self._block_columns: dict[str, str] = {}
        self._positions: dict[tuple[str, int, int], int] = {}
        self._stream_sequence: dict[int, int] = {}

    def describe(self) -> str:
        if "url" in self.config:
            parsed = urllib.parse.urlsplit(self.config["url"])
            return f"redis://{parsed.hostname}:{parsed.port or 6379}{parsed.path}"
        return (
            f"redis://{self.config.get('host', 'localhost')}:{self.config.get('port', 6379)}"
            f"/{self.config.get('db', 0)}"
        )

    # -- connection ----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._client is not None

    def connect(self) -> None:
        if self._client is not None:
            return
        timeout = self.config.get("socket_timeout", 10)
        # RESP2, so a password for a server without one is refused (RESP3's HELLO accepts
        # it), and no retries of redis-py's own: amp's policy retries, visibly.
        options: dict[str, Any] = {"protocol": 2, "retry": Retry(NoBackoff(), 0)}
        if "url" in self.config:
            client = redis.Redis.from_url(self.config["url"], socket_timeout=timeout, **options)
        else:
            client = redis.Redis(
                **options,
                host=self.config.get("host", "localhost"),
                port=self.config.get("port", 6379),
                db=self.config.get("db", 0),
                username=self.config.get("username"),
                password=self.config.get("password"),
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
            )
        try:
            client.ping()
        except redis.exceptions.AuthenticationError as exc:
            raise DestinationError(
                f"Redis at {self.describe()} refused the credentials: {exc}; check "
                "'password' (and 'username')"
            ) from exc
        except redis.exceptions.ConnectionError as exc:
            raise DestinationError(
                f"cannot connect to Redis at {self.describe()}: {exc}; check host and port, "
                "and that Redis is running"
            ) from exc
        self._client = client

    def close(self) -> None:
        self.rollback()
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            self.connect()
        assert self._client is not None
        return self._client

    # -- tables --------------------------------------------------------------------------

    def prepare_table(
        self, table: str, schema: pa.Schema, mode: LoadMode, block_column: str
    ) -> None:
        if block_column not in schema.names:
            raise ConfigError(f"the rows of {table} have no block column {block_column!r}")
        self._block_columns[table] = block_column
        if mode is LoadMode.OVERWRITE:
            self._drop(table)

    def _drop(self, table: str) -> None:
        index = f"{table}:_index"
        keys = self.client.zrange(index, 0, -1)
        pipe = self.client.pipeline(transaction=True)
        for start in range(0, len(keys), 10_000):
            pipe.delete(*keys[start : start + 10_000])
        pipe.delete(index, table)
        pipe.execute()

    # -- transactions --------------------------------------------------------------------

    def begin(self) -> None:
        if self._pipe is not None:
            raise DestinationError("begin() while a MULTI/EXEC is already being built")
        self._pipe = self.client.pipeline(transaction=True)
        self._state_pipe = self.client.pipeline(transaction=True)
        self._positions.clear()
        self._stream_sequence.clear()

    def _pipeline(self) -> Any:
        if self._pipe is None:
            raise DestinationError("write outside begin()/commit()")
        return self._pipe

    def write(
        self, table: str, batch: pa.RecordBatch, block_range: BlockRange | None = None
    ) -> int:
        """Queue the rows into the open MULTI/EXEC under their deterministic ids."""
        if block_range is None:
            raise DestinationError("the Redis loader writes rows of a streamed block range")
        if self.structure == "stream":
            return self._write_stream(table, batch)
        pipe = self._pipeline()
        blocks = batch.column(self._block_columns[table]).to_pylist()
        batch = _textual_times(batch)
        tag = (block_range.hash or "")[2:18]
        prefix = f"{table}:{block_range.network}:{block_range.start}-{block_range.end}:{tag}"
        counter = (table, block_range.start, block_range.end)
        position = self._positions.get(counter, 0)
        scores: dict[str, int] = {}
        for block, row in zip(blocks, batch.to_pylist(), strict=True):
            key = f"{prefix}:{position}"
            pipe.delete(key)  # a replay must not keep fields that are null now
            pipe.hset(key, mapping={k: _value(v) for k, v in row.items() if v is not None})
            scores[key] = int(block)
            position += 1
        if scores:
            pipe.zadd(f"{table}:_index", scores)
        self._positions[counter] = position
        return batch.num_rows

    def _write_stream(self, table: str, batch: pa.RecordBatch) -> int:
        """Entries ``<block>-<n>``: ids grow with blocks, so rows go in block order."""
        pipe = self._pipeline()
        column = self._block_columns[table]
        ordered = batch.sort_by([(column, "ascending")])
        blocks = ordered.column(column).to_pylist()
        for block, row in zip(blocks, _textual_times(ordered).to_pylist(), strict=True):
            sequence = self._stream_sequence.get(int(block), 0) + 1  # 0-0 is not an id
            self._stream_sequence[int(block)] = sequence
            fields = {k: _value(v) for k, v in row.items() if v is not None}
            pipe.xadd(table, fields or {"_empty": ""}, id=f"{int(block)}-{sequence}")
        return batch.num_rows

    def delete_blocks(self, table: str, block_column: str, start: int, end: int) -> int:
        pipe = self._pipeline()
        if self.structure == "stream":
            entries = self.client.xrange(table, min=f"{start}-0", max=f"{end}-18446744073709551615")
            ids = [entry_id for entry_id, _ in entries]
            if ids:
                pipe.xdel(table, *ids)
                # Let the ids of the deleted blocks be used again by their replacements.
                last = self.client.xrevrange(table, max=f"({start}-0", count=1) if start else []
                pipe.execute_command("XSETID", table, last[0][0] if last else "0-0")
            return len(ids)
        index = f"{table}:_index"
        keys = self.client.zrangebyscore(index, start, end)
        for first in range(0, len(keys), 10_000):
            pipe.delete(*keys[first : first + 10_000])
        pipe.zremrangebyscore(index, start, end)
        return len(keys)

    def commit(self) -> None:
        """EXEC the rows; only when every command of it succeeded, EXEC the state (the
        processed-range mark and checkpoint). Redis does not undo the rest of a MULTI/EXEC
        when one command fails, so state must never ride in the same one as rows. A crash
        between the two leaves rows without state: the replay rewrites the same keys."""
        rows, state = self._pipeline(), self._state_pipe
        self._pipe = self._state_pipe = None
        try:
            replies = rows.execute(raise_on_error=False)
            failed = [reply for reply in replies if isinstance(reply, Exception)]
            if failed:
                raise DestinationError(
                    f"Redis MULTI/EXEC applied with {len(failed)} failed command(s): "
                    f"{failed[0]}; the microbatch's state was not saved"
                )
            if state is not None and len(state):
                state.execute()
        except redis.exceptions.RedisError as exc:
            raise DestinationError(f"Redis MULTI/EXEC failed: {exc}") from exc

    def rollback(self) -> None:
        for pipe in (self._pipe, self._state_pipe):
            if pipe is not None:
                with contextlib.suppress(Exception):
                    pipe.reset()
        self._pipe = self._state_pipe = None

    def state_store(self, prefix: str) -> RedisStateStore:
        return RedisStateStore(self, prefix)


class RedisStateStore:
    """Checkpoints and processed ranges as Redis keys, queued into the open MULTI/EXEC.

    {prefix}checkpoint:{connection}:{table}:{worker}   JSON of the current checkpoint
    {prefix}checkpoint_history:{connection}:{table}    list of superseded checkpoints
    {prefix}processed:{connection}:{table}             hash: range id → JSON record
    {prefix}processed_by_end:{connection}:{table}      sorted set: range id → end block
    """

    def __init__(self, loader: RedisLoader, prefix: str) -> None:
        self.loader = loader
        self.prefix = prefix

    def _writer(self) -> Any:
        """The state half of the open transaction (executed after the rows), or Redis."""
        pipe = self.loader._state_pipe
        return pipe if pipe is not None else self.loader.client

    def create_checkpoint_tables(self) -> None:
        """Redis needs no tables."""

    def create_processed_ranges_table(self) -> None:
        """Redis needs no tables."""

    def _checkpoint_key(self, connection: str, table: str, worker_id: int) -> str:
        return f"{self.prefix}checkpoint:{connection}:{table}:{worker_id}"

    def load_checkpoint(self, connection: str, table: str, worker_id: int) -> dict[str, Any] | None:
        raw = self.loader.client.get(self._checkpoint_key(connection, table, worker_id))
        return json.loads(raw) if raw is not None else None

    def save_checkpoint(
        self,
        connection: str,
        table: str,
        worker_id: int,
        data: dict[str, Any],
        timestamp: datetime,
        archive_previous: bool = False,
    ) -> None:
        key = self._checkpoint_key(connection, table, worker_id)
        if archive_previous:
            previous = self.loader.client.get(key)
            if previous is not None:
                self._writer().lpush(
                    f"{self.prefix}checkpoint_history:{connection}:{table}", previous
                )
        self._writer().set(key, json.dumps(data))

    def delete_checkpoint(self, connection: str, table: str, worker_id: int | None = None) -> int:
        if worker_id is not None:
            return int(
                self.loader.client.delete(self._checkpoint_key(connection, table, worker_id))
            )
        keys = list(self.loader.client.scan_iter(f"{self.prefix}checkpoint:{connection}:{table}:*"))
        return int(self.loader.client.delete(*keys)) if keys else 0

    def _ranges(self, connection: str, table: str) -> tuple[str, str]:
        return (
            f"{self.prefix}processed:{connection}:{table}",
            f"{self.prefix}processed_by_end:{connection}:{table}",
        )

    def overlapping_ranges(
        self, connection: str, table: str, block_range: BlockRange
    ) -> list[ProcessedRange]:
        records, by_end = self._ranges(connection, table)
        ids = self.loader.client.zrangebyscore(by_end, block_range.start, "+inf")
        if not ids:
            return []
        found = []
        for raw in self.loader.client.hmget(records, ids):
            if raw is None:
                continue
            record = json.loads(raw)
            if record["network"] == block_range.network and record["start"] <= block_range.end:
                found.append(ProcessedRange.from_record(record))
        return found

    def mark_processed(
        self,
        connection: str,
        table: str,
        block_range: BlockRange,
        processed_at: datetime,
        batch_hash: str | None,
    ) -> None:
        records, by_end = self._ranges(connection, table)
        range_id = f"{block_range.network}:{block_range.start}:{block_range.end}:{block_range.hash}"
        record = ProcessedRange.record(block_range, processed_at, batch_hash)
        writer = self._writer()
        writer.hset(records, range_id, json.dumps(record))
        writer.zadd(by_end, {range_id: block_range.end})

    def _forget(self, connection: str, table: str, keep: Any) -> int:
        records, by_end = self._ranges(connection, table)
        doomed = []
        for range_id, raw in self.loader.client.hgetall(records).items():
            if not keep(json.loads(raw)):
                doomed.append(range_id)
        if doomed:
            writer = self._writer()
            writer.hdel(records, *doomed)
            writer.zrem(by_end, *doomed)
        return len(doomed)

    def forget_ranges_from(self, connection: str, table: str, network: str, start: int) -> int:
        return self._forget(
            connection, table, lambda r: r["network"] != network or r["end"] < start
        )

    def forget_ranges(self, connection: str, table: str) -> int:
        return self._forget(connection, table, lambda r: False)

    def cleanup_old_ranges(self, connection: str, table: str, days: float) -> int:
        cutoff = datetime.now(UTC) - timedelta(days=days)
        return self._forget(
            connection, table, lambda r: datetime.fromisoformat(r["processed_at"]) >= cutoff
        )
