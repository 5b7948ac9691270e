"""``amp`` as a real subprocess, its output read line by line, for the CLI tests."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

AMP = Path(sys.executable).parent / "amp"


class AmpProcess:
    """``amp`` with stdout and stderr read line by line on threads, for waiting on a line."""

    def __init__(self, *args: str) -> None:
        self.popen = subprocess.Popen(
            [str(AMP), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(stream,), daemon=True)
            for stream in (self.popen.stdout, self.popen.stderr)
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self.output.append(line)
            self.lines.put(line)

    def wait_for(self, words: str, timeout: float = 60.0) -> str:
        """The first line containing ``words``; AssertionError if the process ends or
        ``timeout`` passes first."""
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(
                    f"no line with {words!r} within {timeout} s: {''.join(self.output)}"
                ) from None
            if words in line:
                return line

    def finish(self, timeout: float = 60.0) -> tuple[int, str]:
        code = self.popen.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=10)
        return code, "".join(self.output)


@contextmanager
def amp(*args: str) -> Iterator[AmpProcess]:
    process = AmpProcess(*args)
    try:
        yield process
    finally:
        if process.popen.poll() is None:
            process.popen.kill()
            process.popen.wait(timeout=10)


def run_amp(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """``amp ARGS`` to its end, stdout and stderr captured apart. ``env`` is set on top
    of this process's environment, where an empty value removes the variable."""
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for name, value in (env or {}).items():
        if value:
            environment[name] = value
        else:
            environment.pop(name, None)
    return subprocess.run(
        [str(AMP), *args], capture_output=True, text=True, env=environment, timeout=timeout
    )
