"""How the ``amp`` command logs: ``--log-format text`` (for people) or ``json`` (for
log shippers: one JSON object per line on stderr).

Why through the progress line's console on a terminal: rich's live display redraws
itself on stderr; a record written past it would tear the display, one printed through
its console lands above it. Every record, in either format, goes through
``redact_record`` first, so no URL userinfo or password reaches any output.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from rich.console import Console

from amp.progress import STDERR
from amp.redact import redact_text

FORMATS = ("text", "json")


def redact_record(record: logging.LogRecord) -> bool:
    """Every record printed loses URL userinfo, whichever library logged it."""
    record.msg = redact_text(record.getMessage())
    record.args = None
    return True


class JsonFormatter(logging.Formatter):
    """A record as one JSON object: ``time`` (ISO-8601, UTC, milliseconds), ``level``,
    ``logger``, ``message`` and, with a traceback, ``exception`` (redacted too)."""

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created, UTC)
        line = {
            "time": moment.isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = redact_text(self.formatException(record.exc_info))
        return json.dumps(line, ensure_ascii=False)


class ConsoleLineHandler(logging.Handler):
    """Prints each formatted record as one unwrapped line through a rich console (above
    its live display, when one is shown)."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            self.console.print(line, markup=False, highlight=False, emoji=False, soft_wrap=True)
        except Exception:  # logging must never end the program
            self.handleError(record)


def configure_logging(level: int, log_format: str = "text") -> None:
    """On a terminal, log through the progress line's console, so records print above
    it (rich's layout for text); elsewhere (files, pipes, CI), one plain line per record."""
    handler: logging.Handler
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    if log_format == "json":
        handler = ConsoleLineHandler(STDERR) if STDERR.is_terminal else logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
    elif STDERR.is_terminal:
        from rich.logging import RichHandler

        handler = RichHandler(console=STDERR, show_path=False, rich_tracebacks=False)
        fmt = "%(name)s: %(message)s"
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(redact_record)
    logging.basicConfig(level=level, format=fmt, handlers=[handler], force=True)
