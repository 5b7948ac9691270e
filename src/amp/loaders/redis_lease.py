"""Redis's claim of a stream: a lease key holding its owner, renewed while the load runs.

Why a lease: Redis has no session locks, so a claim must expire by itself when its
owner dies. ``SET key owner NX PX lease`` takes it; a daemon thread renews it every
third of the lease (also while the load waits for new blocks at the chain head); close
deletes it only if it is still ours (compare-and-delete). A start finding a lease:

- held by a live process of this host (or renewed while we watch): refused at once;
- held by a process of this host that no longer exists (a SIGKILLed load): taken over
  at once (compare-and-set), so crash-restart loops do not wait;
- held by another host that does not renew it: waited for, up to its time to live.

The loader checks the lease before each commit: a lease it lost (expired during a long
stall, or taken over) stops the load with StreamOwnedError before it writes.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

import redis

from amp.errors import StreamOwnedError
from amp.loaders.ownership import Owner, Stream, owned_error

log = logging.getLogger("amp.loaders.redis")

KEY_PREFIX = "amp_stream_owner"
_POLL_SECONDS = 0.2

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_DELETE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""
_REPLACE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('set', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return false
"""


def lease_key(stream: Stream) -> str:
    return f"{KEY_PREFIX}:{stream.connection}:{stream.table}:{stream.worker}"


class RedisLease:
    """The lease of one stream, held by this loader until ``release``."""

    def __init__(
        self,
        client: redis.Redis,
        stream: Stream,
        destination: str,
        lease_seconds: float,
    ) -> None:
        self.client = client
        self.stream = stream
        self.destination = destination
        self.key = lease_key(stream)
        self.lease_ms = int(lease_seconds * 1000)
        self.lease_seconds = lease_seconds
        self.value = Owner.here().to_json()
        self._renewed_at = 0.0
        self._lost: str | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def acquire(self) -> None:
        """Take the lease (see the module's rules) and start renewing it."""
        deadline: float | None = None
        last_ttl: int | None = None
        while True:
            started = time.monotonic()
            if self.client.set(self.key, self.value, nx=True, px=self.lease_ms):
                break
            pipe = self.client.pipeline()
            pipe.get(self.key)
            pipe.pttl(self.key)
            raw, ttl = pipe.execute()
            if raw is None:
                continue  # expired or released meanwhile: try again
            owner = Owner.from_json(raw)
            if owner is not None and owner.is_gone and self._take_over(raw):
                log.info(
                    "Took over the lease of %s from a process that no longer exists (%s)",
                    self.stream.describe(),
                    owner.describe(),
                )
                break
            renewed = last_ttl is not None and ttl > last_ttl
            alive_here = owner is not None and (owner.is_this_process or _local_alive(owner))
            if deadline is None:
                deadline = started + max(ttl, 0) / 1000 + 1.0
            if alive_here or renewed or time.monotonic() >= deadline:
                raise self._refusal(owner, raw)
            last_ttl = ttl
            self._stop.wait(_POLL_SECONDS)
        self._renewed_at = time.monotonic()
        self._renewer = threading.Thread(
            target=self._renew_until_stopped, name=f"amp-lease {self.key}", daemon=True
        )
        self._renewer.start()

    def check(self) -> None:
        """Raise StreamOwnedError unless the lease is still ours (before each write)."""
        if self._lost is None and time.monotonic() - self._renewed_at > self.lease_seconds:
            self._lost = f"not renewed for over {self.lease_seconds:g} s, so it may have expired"
        if self._lost is not None:
            raise StreamOwnedError(
                f"FATAL: this load lost its lease on the stream {self.stream.describe()} in "
                f"{self.destination} ({self._lost}); another load may be writing it, so this "
                "one stops before writing. Make sure only one load of the stream runs, then "
                "start it again (a longer 'lease_seconds' tolerates longer stalls)."
            )

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still ours (never raises)."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=5)
        try:
            self.client.eval(_DELETE, 1, self.key, self.value)
        except redis.exceptions.RedisError as exc:
            log.warning("Could not release the lease %s (%s); it expires by itself", self.key, exc)

    # -- steps ---------------------------------------------------------------------------

    def _take_over(self, previous: Any) -> bool:
        return bool(self.client.eval(_REPLACE, 1, self.key, previous, self.value, self.lease_ms))

    def _renew_until_stopped(self) -> None:
        interval = self.lease_seconds / 3
        while not self._stop.wait(interval):
            try:
                renewed = self.client.eval(_RENEW, 1, self.key, self.value, self.lease_ms)
            except redis.exceptions.RedisError as exc:
                log.debug("Renewing the lease %s failed (%s); trying again", self.key, exc)
                continue
            if not renewed:
                self._lost = "another load holds it now"
                log.error("Lost the lease of %s: %s", self.stream.describe(), self._lost)
                return
            self._renewed_at = time.monotonic()

    def _refusal(self, owner: Owner | None, raw: Any) -> StreamOwnedError:
        text = owner.describe() if owner is not None else f"lease value {raw!r}"
        return owned_error(
            self.stream,
            self.destination,
            f"{text}; lease key {self.key!r}",
            f"A crashed load's lease expires within its lease_seconds; "
            f"to clear it by hand: DEL {self.key}.",
        )


def _local_alive(owner: Owner) -> bool:
    """The owner runs on this host and its process exists."""
    return owner.host == socket.gethostname() and not owner.is_gone
