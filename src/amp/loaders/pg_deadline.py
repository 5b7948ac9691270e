"""A psycopg connection that gives up on a silent PostgreSQL after ``dead_peer_timeout``.

Why on the client: every kernel mechanism needs the peer to stop acknowledging.
Keepalive probes and ``tcp_user_timeout`` (both set here too) catch a host that is
gone, but not a path that still acknowledges and never answers (a stalled proxy or
load balancer, a frozen server whose kernel still ACKs), and PostgreSQL's own
``statement_timeout`` runs on the server, so it cannot help when the server never
sees the statement or its reply never arrives. psycopg routes every wait for the
server after connecting (queries, COPY data, COMMIT, ROLLBACK) through
``Connection.wait``; bounding that wait is the one place that covers them all.
Connecting itself is bounded by ``connect_timeout``.

The bound is per wait, so it also caps a single statement that legitimately runs
longer than ``dead_peer_timeout`` (a lock wait, a huge reorg DELETE): raise the key for
such loads.
"""

from __future__ import annotations

from typing import Any, TypeVar

import psycopg
from psycopg.abc import PQGen

from amp.deadpeer import keepalive_times

RV = TypeVar("RV")

# psycopg's own poll interval of Connection.wait (psycopg.connection._WAIT_INTERVAL).
_WAIT_INTERVAL = 0.1


def libpq_keepalive_params(timeout: float) -> dict[str, Any]:
    """libpq parameters that let the kernel declare a vanished server dead within about
    ``timeout`` seconds (ignored by libpq on Unix-domain sockets)."""
    times = keepalive_times(timeout)
    return {
        "keepalives": 1,
        "keepalives_idle": times.idle_seconds,
        "keepalives_interval": times.interval_seconds,
        "keepalives_count": times.probes,
        "tcp_user_timeout": times.user_timeout_ms,
    }


class DeadlineConnection(psycopg.Connection[Any]):
    """``psycopg.Connection`` whose every wait for the server ends after
    ``dead_peer_timeout`` seconds: the connection is then closed (its protocol state
    is unknown mid-message) and ``psycopg.OperationalError`` raised, a lost
    connection, which amp retries on a new one. A COMMIT cut off this way has an
    unknown outcome, which the loader reports (``commit_outcome_unknown``)."""

    dead_peer_timeout: float | None = None

    def wait(
        self, gen: PQGen[RV], interval: float = _WAIT_INTERVAL, timeout: float | None = None
    ) -> RV:
        bound = self.dead_peer_timeout
        if bound is None or (timeout is not None and timeout <= bound):
            return super().wait(gen, interval, timeout)
        try:
            return super().wait(gen, interval, bound)
        except psycopg.errors._WaitTimeout:  # psycopg's only signal that the wait ran out
            self.pgconn.finish()
            raise psycopg.OperationalError(
                f"no reply from PostgreSQL within {bound:g} s (dead_peer_timeout); the "
                "connection is presumed dead and was closed"
            ) from None
