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
import math
import urllib.parse
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, cast

import pyarrow as pa
import pyarrow.compute as pc
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from amp.config import number_at_least, port_number, timeout_seconds, typed
from amp.deadpeer import DEAD_PEER_TIMEOUT_KEY, dead_peer_timeout, keepalive_times
from amp.errors import ConfigError, DestinationError
from amp.loaders.base import DataLoader, LoadMode
from amp.loaders.blocks import RANGE_START
from amp.loaders.ownership import Stream
from amp.loaders.redis_lease import RedisLease
from amp.streaming.state_documents import (
    CHECKPOINT,
    CHECKPOINT_HISTORY,
    DocKey,
    Document,
    DocumentStateStore,
    checkpoint_key,
    processed_key,
)
from amp.streaming.types import BlockRange

if TYPE_CHECKING:
    from redis.typing import ZSetRangeResponse

_STRUCTURES = ("hash", "stream")
_LEASE_SECONDS = (1.0, 3600.0)  # the range 'lease_seconds' accepts
_DEAD_PEER_SECONDS = 10.0  # dead_peer_timeout's default here


def _members(reply: ZSetRangeResponse) -> list[bytes | str]:
    """The members of a ZRANGE* reply asked for without scores. redis-py types every
    such reply as possibly scored (its signature does not depend on ``withscores``)."""
    return cast("list[bytes | str]", reply)


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


def _check_url(where: str, url: str) -> None:
    """A redis:// URL whose port parses: redis-py would only fail on it at connect."""
    try:
        urllib.parse.urlsplit(url).port  # noqa: B018 - parsing is the check
    except ValueError:
        raise ConfigError(
            f"{where}['url'] has an invalid port; a TCP port is a number from 1 to 65535"
        ) from None


# What a url already says (redis://[[user]:password@]host:port/db).
_URL_PARTS = frozenset({"host", "port", "db", "username", "password"})


class RedisLoader(DataLoader[dict[str, Any]]):
    """Loads into Redis. Keys: host, port, db, password, username, url, data_structure
    ('hash' or 'stream'), socket_timeout, dead_peer_timeout, lease_seconds (the stream's
    lease, default 30)."""

    loader_type = "redis"
    transactional = False
    finds_range_starts = True
    config_keys = frozenset(
        {
            "host",
            "port",
            "db",
            "password",
            "username",
            "url",
            "data_structure",
            "socket_timeout",
            DEAD_PEER_TIMEOUT_KEY,
            "lease_seconds",
        }
    )

    def __init__(self, config: dict[str, Any], connection_name: str = "") -> None:
        super().__init__(config, connection_name)
        where = "redis config"
        for key in ("host", "password", "username", "url"):
            if key in self.config:
                typed(where, key, self.config[key], str)
        if "port" in self.config:
            port_number(where, "port", self.config["port"])
        if "db" in self.config:
            typed(where, "db", self.config["db"], int)
            number_at_least(where, "db", self.config["db"], 0)
        if "url" in self.config:
            _check_url(where, self.config["url"])
            # A url says where to connect on its own: a host or password given beside it
            # would be ignored, and a load writing somewhere the user did not mean is
            # worse than a refusal.
            beside = sorted(_URL_PARTS & self.config.keys())
            if beside:
                raise ConfigError(
                    f"{where} gives 'url' and also {', '.join(repr(k) for k in beside)}, "
                    "which the url already decides; give either 'url' alone (its "
                    "user, password, host, port and /db inside it) or "
                    "host/port/db/username/password without 'url'"
                )
        # Redis's bound defaults to 10 s (its commands are short), so a lease renewal
        # stuck on a dead connection is retried well within lease_seconds.
        self.dead_peer_timeout = dead_peer_timeout(where, self.config, _DEAD_PEER_SECONDS)
        self.socket_timeout = (
            timeout_seconds(where, "socket_timeout", self.config["socket_timeout"])
            if "socket_timeout" in self.config
            else self.dead_peer_timeout
        )
        self.structure = self.config.get("data_structure", "hash")
        if self.structure not in _STRUCTURES:
            raise ConfigError(
                f"{where}['data_structure'] must be one of {', '.join(_STRUCTURES)}, "
                f"got {self.structure!r}"
            )
        self._client: redis.Redis | None = None
        self._pipe: Any = None
        # State documents staged by the open transaction (None when none is open).
        self._staged_documents: dict[DocKey, Document | None] | None = None
        self._block_columns: dict[str, str] = {}
        self._positions: dict[tuple[str, int, int], int] = {}
        self._stream_sequence: dict[int, int] = {}
        self.lease_seconds = _lease_seconds(self.config)
        self._leases: dict[Stream, RedisLease] = {}

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
        # RESP2, so a password for a server without one is refused (RESP3's HELLO accepts
        # it), and no retries of redis-py's own: amp's policy retries, visibly.
        options: dict[str, Any] = {"protocol": 2, "retry": Retry(NoBackoff(), 0)}
        options.update(self._dead_peer_options())
        if "url" in self.config:
            client = redis.Redis.from_url(self.config["url"], **options)
        else:
            client = redis.Redis(
                **options,
                host=self.config.get("host", "localhost"),
                port=self.config.get("port", 6379),
                db=self.config.get("db", 0),
                username=self.config.get("username"),
                password=self.config.get("password"),
            )
        try:
            client.ping()
        except redis.exceptions.AuthenticationError as exc:
            raise DestinationError(
                f"Redis at {self.describe()} refused the credentials: {exc}; check "
                "'password' (and 'username')"
            ) from exc
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise DestinationError(
                f"cannot connect to Redis at {self.describe()}: {exc}; check host and port, "
                "and that Redis is running"
            ) from exc
        self._client = client

    def _dead_peer_options(self) -> dict[str, Any]:
        """Socket settings that end every wait on a silent Redis: a connect and reply
        deadline (``socket_timeout``, else ``dead_peer_timeout``) and TCP keepalive plus
        ``TCP_USER_TIMEOUT`` for a host that vanished. redis-py raises TimeoutError when
        the deadline passes and drops that connection; the next command opens another."""
        return {
            "socket_timeout": self.socket_timeout,
            "socket_connect_timeout": self.socket_timeout,
            "socket_keepalive": True,
            "socket_keepalive_options": keepalive_times(self.dead_peer_timeout).socket_options(),
        }

    def close(self) -> None:
        self.rollback()
        self.release_stream()
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

    # -- one writer per stream --------------------------------------------------------

    def claim_stream(self, table: str, worker_id: int) -> None:
        """A lease key renewed while the load runs; see ``amp.loaders.redis_lease``."""
        stream = Stream(self.connection_name, table, worker_id)
        if stream in self._leases:
            return
        lease = RedisLease(self.client, stream, self.describe(), self.lease_seconds)
        lease.acquire()
        self._leases[stream] = lease

    def release_stream(self) -> None:
        leases, self._leases = self._leases, {}
        for lease in leases.values():
            lease.release()

    def _check_leases(self) -> None:
        """Before a commit writes: StreamOwnedError if a lease was lost (the rows are not
        written; the caller rolls back)."""
        for lease in self._leases.values():
            lease.check()

    def check_parallel_writers(self) -> None:
        """A stream's entry ids (``<block>-<n>``) must grow, so its blocks must arrive in
        order; the workers of a parallel load write several block ranges at once."""
        if self.structure == "stream":
            raise ConfigError(
                "a parallel load cannot write to a Redis stream (data_structure='stream'): "
                "its entry ids <block>-<n> must grow, and parallel workers write several "
                "block ranges at once. Use data_structure='hash', or load without "
                "parallel_config"
            )

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
        self._staged_documents = {}
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
            ids = [entry_id for entry_id, _ in entries or ()]
            if ids:
                pipe.xdel(table, *ids)
                # Let the ids of the deleted blocks be used again by their replacements.
                last = self.client.xrevrange(table, max=f"({start}-0", count=1) if start else []
                pipe.execute_command("XSETID", table, last[0][0] if last else "0-0")
            return len(ids)
        index = f"{table}:_index"
        keys = _members(self.client.zrangebyscore(index, start, end))
        for first in range(0, len(keys), 10_000):
            pipe.delete(*keys[first : first + 10_000])
        pipe.zremrangebyscore(index, start, end)
        return len(keys)

    def first_range_start(self, table: str, block: int) -> int | None:
        """The row with the lowest ``_amp_block_end`` at or past ``block`` belongs to the
        earliest such microbatch; its ``_amp_block_start`` field says where it began."""
        if self.structure == "stream":
            entries = self.client.xrange(table, min=f"{block}-0", count=1)
            fields = entries[0][1] if entries else None
            start = fields.get(RANGE_START.encode()) if fields else None
        else:
            keys = _members(
                self.client.zrangebyscore(f"{table}:_index", block, "+inf", start=0, num=1)
            )
            start = self.client.hget(keys[0], RANGE_START) if keys else None
        return int(start) if start is not None else None

    def commit(self) -> None:
        """EXEC the rows; only when every command of it succeeded, EXEC the state (the
        documents the transaction staged: processed-range mark, checkpoint). Redis does
        not undo the rest of a MULTI/EXEC when one command fails, so state must never
        ride in the same one as rows. A crash between the two leaves rows without state:
        the replay rewrites the same keys."""
        rows, documents = self._pipeline(), self._staged_documents
        self._check_leases()
        self._pipe = self._staged_documents = None
        try:
            replies = rows.execute(raise_on_error=False)
            failed = [reply for reply in replies if isinstance(reply, Exception)]
            if failed:
                raise DestinationError(
                    f"Redis MULTI/EXEC applied with {len(failed)} failed command(s): "
                    f"{failed[0]}; the microbatch's state was not saved"
                )
            if documents:
                RedisDocuments(self).write(documents)
        except redis.exceptions.RedisError as exc:
            raise DestinationError(f"Redis MULTI/EXEC failed: {exc}") from exc

    def rollback(self) -> None:
        if self._pipe is not None:
            with contextlib.suppress(Exception):
                self._pipe.reset()
        self._pipe = self._staged_documents = None

    def state_store(self, prefix: str) -> DocumentStateStore:
        """Checkpoints and processed ranges as Redis keys (see ``RedisDocuments``)."""
        return DocumentStateStore(RedisDocuments(self), prefix)


def _lease_seconds(config: dict[str, Any]) -> float:
    value = config.get("lease_seconds", 30)
    low, high = _LEASE_SECONDS
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        raise ConfigError(
            f"redis config['lease_seconds'] must be a number of seconds from {low:g} to "
            f"{high:g} (how long a crashed load's claim of its stream outlives it), "
            f"got {value!r}"
        )
    return float(value)


def _glob_escape(text: str) -> str:
    """``text`` matched literally in a SCAN pattern."""
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)


def _stream_parts(stream: str, connection: str | None) -> tuple[str, str] | None:
    """``{connection}:{table}`` → (connection, table)."""
    if connection is not None:
        head = f"{connection}:"
        return (connection, stream[len(head) :]) if stream.startswith(head) else None
    name, colon, table = stream.partition(":")
    return (name, table) if colon else None


class RedisDocuments:
    """The ``DocumentBackend`` of Redis: state documents as Redis keys, written in one
    MULTI/EXEC (after the rows' one, at commit).

    {prefix}checkpoint:{connection}:{table}:{worker}   JSON of the current checkpoint
    {prefix}checkpoint_history:{connection}:{table}    list of superseded checkpoints
    {prefix}processed:{connection}:{table}             hash: range id → JSON record
    {prefix}processed_by_end:{connection}:{table}      sorted set: range id → end block

    A range id is ``network:start:end:end_hash``.
    """

    def __init__(self, loader: RedisLoader) -> None:
        self.loader = loader

    @staticmethod
    def _checkpoint_name(key: DocKey) -> str:
        prefix, _, connection, table, worker_id = key
        return f"{prefix}checkpoint:{connection}:{table}:{worker_id}"

    @staticmethod
    def _ranges(prefix: str, connection: str, table: str) -> tuple[str, str]:
        return (
            f"{prefix}processed:{connection}:{table}",
            f"{prefix}processed_by_end:{connection}:{table}",
        )

    @staticmethod
    def _range_id(key: DocKey) -> str:
        return ":".join(str(part) for part in key[4:8])

    def committed_document(self, table: str, key: DocKey) -> Document | None:
        client = self.loader.client
        if key[1] == CHECKPOINT:
            raw = client.get(self._checkpoint_name(key))
        else:
            records, _ = self._ranges(key[0], key[2], table)
            raw = client.hget(records, self._range_id(key))
        return json.loads(raw) if raw is not None else None

    def committed_documents(
        self, table: str, prefix: str, kind: str, connection: str, min_end: int | None = None
    ) -> dict[DocKey, Document]:
        client = self.loader.client
        if kind == CHECKPOINT:
            found: dict[DocKey, Document] = {}
            stem = f"{prefix}checkpoint:{connection}:{table}:"
            names = [name.decode() for name in client.scan_iter(f"{stem}*")]
            raws = client.mget(names) if names else []
            for name, raw in zip(names, raws, strict=True):
                worker = name[len(stem) :]
                if raw is not None and worker.isdigit():
                    found[checkpoint_key(prefix, connection, table, int(worker))] = json.loads(raw)
            return found
        records, by_end = self._ranges(prefix, connection, table)
        if min_end is None:
            raws = list(client.hgetall(records).values())
        else:
            ids = _members(client.zrangebyscore(by_end, min_end, "+inf"))
            raws = client.hmget(records, ids) if ids else []
        documents = [json.loads(raw) for raw in raws if raw is not None]
        return {processed_key(prefix, connection, table, d): d for d in documents}

    def listed_documents(
        self, prefix: str, kind: str, connection: str | None, table: str | None
    ) -> dict[DocKey, Document]:
        """By SCAN over the key names. A name ``{connection}:{table}`` is split at the
        first colon unless ``connection`` is given: a connection name with a colon is
        listed correctly only when asked for by name."""
        client = self.loader.client
        stem = f"{prefix}{kind}:"
        conn_glob = "*" if connection is None else _glob_escape(connection)
        table_glob = "*" if table is None else _glob_escape(table)
        found: dict[DocKey, Document] = {}
        if kind == CHECKPOINT:
            pattern = f"{_glob_escape(stem)}{conn_glob}:{table_glob}:*"
            names = sorted(name.decode() for name in client.scan_iter(pattern))
            raws = client.mget(names) if names else []
            for name, raw in zip(names, raws, strict=True):
                stream, _, worker = name[len(stem) :].rpartition(":")
                parts = _stream_parts(stream, connection)
                if raw is not None and worker.isdigit() and parts is not None:
                    key = checkpoint_key(prefix, parts[0], parts[1], int(worker))
                    found[key] = json.loads(raw)
            return found
        for name in client.scan_iter(f"{_glob_escape(stem)}{conn_glob}:{table_glob}"):
            parts = _stream_parts(name.decode()[len(stem) :], connection)
            if parts is None:
                continue
            for raw in client.hgetall(name).values():
                record = json.loads(raw)
                found[processed_key(prefix, parts[0], parts[1], record)] = record
        return found

    def staged_documents(self, table: str) -> dict[DocKey, Document | None] | None:
        return self.loader._staged_documents

    def apply_documents(self, table: str, changes: Mapping[DocKey, Document | None]) -> None:
        self.write(changes)

    def write(self, changes: Mapping[DocKey, Document | None]) -> None:
        """Write ``changes`` in one MULTI/EXEC."""
        pipe = self.loader.client.pipeline(transaction=True)
        for key, document in changes.items():
            prefix, kind, connection, table = key[:4]
            if kind == CHECKPOINT:
                name = self._checkpoint_name(key)
                if document is None:
                    pipe.delete(name)
                else:
                    pipe.set(name, json.dumps(document))
            elif kind == CHECKPOINT_HISTORY:
                if document is not None:  # the list keeps the checkpoint, newest first
                    history = f"{prefix}checkpoint_history:{connection}:{table}"
                    pipe.lpush(history, json.dumps(document["checkpoint"]))
            else:
                records, by_end = self._ranges(prefix, connection, table)
                range_id = self._range_id(key)
                if document is None:
                    pipe.hdel(records, range_id)
                    pipe.zrem(by_end, range_id)
                else:
                    pipe.hset(records, range_id, json.dumps(document))
                    pipe.zadd(by_end, {range_id: document["end"]})
        pipe.execute()
