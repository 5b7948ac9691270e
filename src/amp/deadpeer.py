"""``dead_peer_timeout``: how long a connection may wait on a silent peer.

Why a clock at all: a peer that vanishes without a reset or a FIN (a dead NAT, a
failed-over host, a black-holed route, a server that accepts and then stalls) leaves a
socket that never errors, and a load blocked on it would wait forever. One key bounds
that silence for every networked destination (and ``Client(dead_peer_timeout=...)`` for
the Amp server); each side turns it into its client library's own knobs (TCP keepalive
probes, ``TCP_USER_TIMEOUT``, a deadline on every wait for a reply, librdkafka's
``socket.timeout.ms``, gRPC keepalive pings), and the failure it raises is one the
classifier already calls transient (a lost connection, a timeout, ``UNAVAILABLE``), so
the load reconnects and retries.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from amp.config import timeout_seconds

DEAD_PEER_TIMEOUT_KEY = "dead_peer_timeout"
DEFAULT_DEAD_PEER_TIMEOUT = 30.0
# Keepalive probes sent after the idle time, before the kernel declares the peer dead.
_PROBES = 3


def dead_peer_timeout(
    where: str, config: Mapping[str, Any], default: float = DEFAULT_DEAD_PEER_TIMEOUT
) -> float:
    """The bound a connection's ``config`` sets, or ``default``; ConfigError if bad."""
    return timeout_seconds(where, DEAD_PEER_TIMEOUT_KEY, config.get(DEAD_PEER_TIMEOUT_KEY, default))


@dataclass(frozen=True, slots=True)
class KeepaliveTimes:
    """TCP keepalive and user-timeout settings, in the whole units the kernel takes."""

    idle_seconds: int
    interval_seconds: int
    probes: int
    user_timeout_ms: int

    def socket_options(self) -> dict[int, int]:
        """The ``setsockopt(IPPROTO_TCP, ...)`` options of these times that this OS has
        (``TCP_USER_TIMEOUT`` is Linux's; macOS names idle ``TCP_KEEPALIVE``)."""
        wanted = {
            "TCP_KEEPIDLE": self.idle_seconds,
            "TCP_KEEPINTVL": self.interval_seconds,
            "TCP_KEEPCNT": self.probes,
            "TCP_USER_TIMEOUT": self.user_timeout_ms,
        }
        return {
            getattr(socket, name): value for name, value in wanted.items() if hasattr(socket, name)
        }


def keepalive_times(timeout: float) -> KeepaliveTimes:
    """Kernel settings that declare a silent peer dead within about ``timeout``: probe
    after half of it idle, then ``_PROBES`` probes over the other half; unacknowledged
    sent data gives up after ``timeout``. Keepalive takes whole seconds (at least 1),
    so below 6 s the kernel is coarser than the bound; the loaders' own deadline on
    every wait still holds it.

    Why both: they catch a peer that stopped acknowledging (a host or NAT gone). A path
    that still acknowledges and never answers (a stalled proxy, a frozen server whose
    kernel still ACKs) is caught only by the deadline on each wait."""
    return KeepaliveTimes(
        idle_seconds=max(1, int(timeout / 2)),
        interval_seconds=max(1, int(timeout / (2 * _PROBES))),
        probes=_PROBES,
        user_timeout_ms=max(1, round(timeout * 1000)),
    )
