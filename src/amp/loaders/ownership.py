"""One writer per stream: what the loaders share to claim a (connection, table, worker).

Why: two loads of the same stream at once both write its rows (issue 9 saw 1,105
duplicated rows). Each loader claims the stream with what its destination offers (a
PostgreSQL advisory lock, a Redis lease key, DuckDB's file lock plus the in-process
registry here, Kafka's transactional.id fencing) and stores who it is next to the claim,
so a refused load can say who holds it: host, PID and when it started.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from amp.errors import StreamOwnedError


@dataclass(frozen=True)
class Stream:
    """The unit of ownership: one load's (connection, table, worker)."""

    connection: str
    table: str
    worker: int

    def describe(self) -> str:
        return f"(connection {self.connection!r}, table {self.table!r}, worker {self.worker})"

    def lock_key(self, *scope: str) -> int:
        """A stable signed 64-bit number for this stream within ``scope`` (say, a schema):
        the same in every process and every Python version (not ``hash()``)."""
        parts = ("amp-stream", *scope, self.connection, self.table, str(self.worker))
        digest = hashlib.blake2b("\0".join(parts).encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big", signed=True)


@dataclass(frozen=True)
class Owner:
    """Who holds a claim, stored alongside it: enough to find and stop that load."""

    host: str
    pid: int
    started: str  # ISO-8601 UTC, when the claim was taken
    token: str = field(default="", compare=False)  # tells two claims of one process apart

    @classmethod
    def here(cls) -> Owner:
        """This process, claiming now."""
        return cls(
            socket.gethostname(),
            os.getpid(),
            datetime.now(UTC).isoformat(timespec="seconds"),
            os.urandom(8).hex(),
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str | bytes | None) -> Owner | None:
        """The owner stored by a claim, or None when it is missing or unreadable."""
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            return cls(str(data["host"]), int(data["pid"]), str(data["started"]), data["token"])
        except (ValueError, TypeError, KeyError):
            return None

    def describe(self) -> str:
        return f"host {self.host}, PID {self.pid}, started {self.started}"

    @property
    def is_this_process(self) -> bool:
        return self.host == socket.gethostname() and self.pid == os.getpid()

    @property
    def is_gone(self) -> bool:
        """True only when the owner ran on this host and its process no longer exists:
        a crashed load whose claim the destination has not noticed ending yet."""
        if self.host != socket.gethostname() or self.pid == os.getpid():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except OSError:  # exists, owned by another user
            return False
        return False


def owned_error(stream: Stream, destination: str, owner: str, fix: str = "") -> StreamOwnedError:
    """The refusal: the stream, its owner and what to do."""
    return StreamOwnedError(
        f"FATAL: the stream {stream.describe()} into {destination} is already being loaded "
        f"by another load ({owner or 'owner unknown'}). Two loads of one stream would write "
        "its rows twice, so this one stops. Stop the other load (or wait for it to end), "
        f"or load into another table or with another worker id.{(' ' + fix) if fix else ''}",
        owner,
    )


class _ProcessRegistry:
    """Streams claimed by loaders of this process, keyed by whatever the destination
    says makes two streams the same (say, a file's real path, the table and worker).

    Why: a destination that serialises one process's connections (DuckDB: one writer
    process per file) cannot refuse a second loader of the same process by itself.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders: dict[tuple[object, ...], tuple[object, Owner]] = {}

    def claim(
        self, key: tuple[object, ...], stream: Stream, holder: object, destination: str
    ) -> None:
        """Register ``holder`` for ``key``; StreamOwnedError if another holder has it."""
        with self._lock:
            found = self._holders.get(key)
            if found is not None and found[0] is not holder:
                raise owned_error(
                    stream,
                    destination,
                    f"another loader of this process, connection "
                    f"{getattr(found[0], 'connection_name', '?')!r}, {found[1].describe()}",
                    "Close the other loader first.",
                )
            if found is None:
                self._holders[key] = (holder, Owner.here())

    def release(self, holder: object) -> None:
        with self._lock:
            for key in [k for k, (h, _) in self._holders.items() if h is holder]:
                del self._holders[key]


PROCESS_CLAIMS = _ProcessRegistry()
