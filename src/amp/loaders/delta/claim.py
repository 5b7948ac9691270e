"""One writer per stream of a Delta table: a file lock, and a fence in the log.

Why two: a local table has a file system that can lock, so a second load of the same
stream is refused at once with its owner named (an ``flock`` on a file in
``<table_path>/_amp_locks``, outside every table directory; the kernel drops it when
the process dies, so a killed load never blocks its restart). An object store has no
lock, so every claimed stream also has a fence: a Delta application transaction
``amp-writer:[connection, table, worker]`` whose version each commit of the stream
raises by one. A commit first checks that the version is still the one this load last
saw; a higher one means another load wrote the stream meanwhile, and this one stops.
Two commits raising it at the same moment conflict in Delta's own concurrency check,
and the loser finds the raised version when its unit is replayed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from dataclasses import dataclass
from typing import IO

from amp.errors import StreamOwnedError
from amp.loaders.ownership import Owner, Stream, owned_error

LOCK_DIR = "_amp_locks"


def fence_app_id(stream: Stream) -> str:
    return "amp-writer:" + json.dumps([stream.connection, stream.table, stream.worker])


@dataclass
class Fence:
    """A claimed stream's fence: the version this load expects to find."""

    stream: Stream
    expected: int

    @property
    def app_id(self) -> str:
        return fence_app_id(self.stream)

    def check(self, found: int | None, destination: str) -> None:
        if (found or 0) != self.expected:
            raise owned_error(
                self.stream,
                destination,
                f"another load committed to this stream after this one claimed it (fence "
                f"version {found}, expected {self.expected})",
                "Only one load of a stream may run at a time.",
            )


class FileClaim:
    """An exclusive ``flock`` on ``<lock_dir>/<stream hash>.lock`` holding the owner."""

    def __init__(self, lock_dir: str, stream: Stream, destination: str) -> None:
        self.stream = stream
        digest = hashlib.blake2b(
            "\0".join((stream.connection, stream.table, str(stream.worker))).encode(),
            digest_size=12,
        ).hexdigest()
        self.path = os.path.join(lock_dir, f"{digest}.lock")
        self.destination = destination
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held while claimed
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = Owner.from_json(handle.read() or None)
            handle.close()
            raise self._refusal(owner) from None
        except BaseException:
            handle.close()
            raise
        handle.seek(0)
        handle.truncate()
        handle.write(Owner.here().to_json())
        handle.flush()
        self._file = handle

    def _refusal(self, owner: Owner | None) -> StreamOwnedError:
        described = owner.describe() if owner is not None else "owner unknown"
        return owned_error(self.stream, self.destination, described)

    def release(self) -> None:
        handle, self._file = self._file, None
        if handle is None:
            return
        with contextlib.suppress(OSError):
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        with contextlib.suppress(OSError):
            handle.close()
