"""Logging triggers that tests of several suites use to act between a failure and its
retry (the TCP proxy that stops, stalls or silences a network path is ``tcpproxy``).
Everything is real: handlers on amp's loggers.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

RESILIENCE_LOGGER = "amp.streaming.resilience"


# -- logging triggers -------------------------------------------------------------------------


class LogTrigger(logging.Handler):
    """Runs ``action`` (once, or every time) when a record's message contains ``needle``.

    The action runs in the thread that logs, i.e. inside the retry loop, which is what
    lets a test change the world exactly between a failure and its retry.
    """

    def __init__(self, needle: str, action: Callable[[], None], once: bool = True) -> None:
        super().__init__(level=logging.DEBUG)
        self.needle = needle
        self.action = action
        self.once = once
        self.fired = 0
        self.errors: list[BaseException] = []

    def emit(self, record: logging.LogRecord) -> None:
        if self.needle not in record.getMessage() or (self.once and self.fired):
            return
        self.fired += 1
        try:
            self.action()
        except BaseException as exc:  # reported by the test, not swallowed
            self.errors.append(exc)


@contextlib.contextmanager
def log_trigger(
    needle: str, action: Callable[[], None], once: bool = True, logger: str = RESILIENCE_LOGGER
) -> Iterator[LogTrigger]:
    handler = LogTrigger(needle, action, once)
    target = logging.getLogger(logger)
    previous = target.level
    target.setLevel(logging.DEBUG)
    target.addHandler(handler)
    try:
        yield handler
    finally:
        target.removeHandler(handler)
        target.setLevel(previous)
    assert not handler.errors, f"trigger on {needle!r} failed: {handler.errors!r}"
