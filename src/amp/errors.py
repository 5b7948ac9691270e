"""amp's exceptions, split first by what the caller should do about them.

    AmpError
    ├── ConfigError            bad input: fix the configuration or arguments (ValueError)
    ├── ProtocolError          the server broke the wire contract (permanent)
    ├── ServerError            a call to the Amp server failed (``status`` = gRPC code)
    ├── DestinationError       a write/commit to the destination failed
    ├── FatalLoadError         the pipeline stopped to prevent data loss (RuntimeError)
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


class CircuitOpenError(AmpError):
    """The circuit breaker is open: the call was rejected without being tried.

    ``retry_in_seconds`` says when the breaker will admit a recovery probe.
    """

    def __init__(self, message: str, retry_in_seconds: float) -> None:
        super().__init__(message)
        self.retry_in_seconds = retry_in_seconds
