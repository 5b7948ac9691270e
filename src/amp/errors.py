"""amp's exceptions, split first by what the caller should do about them.

    AmpError
    ├── ConfigError            bad input: fix the configuration or arguments (ValueError)
    ├── ProtocolError          the server broke the wire contract (permanent)
    ├── ServerError            a call to the Amp server failed (``status`` = gRPC code)
    │   └── StreamEndedError   a streaming query's stream ended without an error (UNAVAILABLE)
    ├── DestinationError       a write/commit to the destination failed
    ├── FatalLoadError         the pipeline stopped to prevent data loss (RuntimeError)
    │   └── StreamOwnedError   another process is loading the same stream (not retried)
    └── CircuitOpenError       rejected at once: the circuit breaker is open

Each wraps the original exception as ``__cause__`` (raised ``from`` it).
"""

from __future__ import annotations


class AmpError(Exception):
    """Root of every error amp raises on purpose."""


class ConfigError(AmpError, ValueError):
    """A configuration value, option or argument is wrong; the message names the fix."""


class ProtocolError(AmpError):
    """The server's messages break protocol rules (gaps, broken hash chains, bad metadata)."""


class ServerError(AmpError):
    """A call to the Amp server failed; ``status`` is the gRPC status code name."""

    def __init__(self, message: str, status: str = "UNKNOWN") -> None:
        super().__init__(message)
        self.status = status


class StreamEndedError(ServerError):
    """A streaming query's stream ended without an error status.

    Why a ServerError with status UNAVAILABLE: a streaming query never ends by itself
    (protocol §2), so a clean end means the server shut down (SIGTERM) or a proxy closed
    an idle stream. Both are transient: reconnect and resume after the last committed
    microbatch with ``amp-resume``, like any dropped stream.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, "UNAVAILABLE")


class DestinationError(AmpError):
    """The destination refused or failed an operation; ``sqlstate`` when SQL said why."""

    def __init__(
        self, message: str, sqlstate: str | None = None, commit_outcome_unknown: bool = False
    ) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        # A COMMIT whose connection was lost: it may or may not have been applied.
        self.commit_outcome_unknown = commit_outcome_unknown


class FatalLoadError(AmpError, RuntimeError):
    """The load stopped on purpose so that nothing is lost or half-written."""


class LoadStopped(AmpError):
    """The load was asked to stop while it waited to retry: it ends at once, as at a
    microbatch boundary (what was not committed is rolled back), instead of sitting out
    a backoff of up to minutes first."""


class StreamOwnedError(FatalLoadError):
    """Another load owns this stream (connection, table, worker): two writers of one
    stream would write its rows twice, so the load stops at once, never retried.

    The message names the stream, the owner (host, PID, start time, as far as the
    destination can tell) and the fix; ``owner`` holds that description.
    """

    def __init__(self, message: str, owner: str = "") -> None:
        super().__init__(message)
        self.owner = owner


class CircuitOpenError(AmpError):
    """The circuit breaker is open: the call was rejected without being tried.

    ``retry_in_seconds`` says when the breaker will admit a recovery probe.
    """

    def __init__(self, message: str, retry_in_seconds: float) -> None:
        super().__init__(message)
        self.retry_in_seconds = retry_in_seconds
