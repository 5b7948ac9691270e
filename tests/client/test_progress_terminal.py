"""What a user sees in a real terminal (issue 12): ``amp load`` runs in a tmux pane of
160x40 against the dev server into PostgreSQL, and the test reads the screen with
``tmux capture-pane``. The single streaming load's line shows the table, rows, rows/s,
the block and the head, the block never past the head; Ctrl-C stops it with the clean
stop message and its summary (exit 0). A parallel load shows a bar per partition and
its summary. Every figure read off the screen is checked against the server's chain and
the destination table."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pytest
from oracle import Destination

import amp
from amp.devserver import DevServer
from ampcli import AMP
from kit import PG_HOST, PG_PORT, assert_table_equals_chain, unique
from kit.services import PG_DATABASE, PG_USER

pytestmark = pytest.mark.timeout(180)

QUERY = "SELECT * FROM eth_firehose.logs"
PG_URL = f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{PG_DATABASE}"
# The amp package under test: the pane's amp imports the same one.
SOURCE = str(Path(amp.__file__).resolve().parents[1])
NUMBER = r"[\d,]+"
EXIT_STATUS = re.compile(r"^amp exited with status (?P<status>\d+)$", re.MULTILINE)
T = TypeVar("T")


def _int(text: str) -> int:
    return int(text.replace(",", ""))


class Pane:
    """One tmux pane on a private tmux server (its own socket), running ``command``; the
    pane stays on screen after the command exits, so its last output can be read."""

    def __init__(self, command: list[str], config: Path) -> None:
        tmux = shutil.which("tmux")
        if tmux is None:
            pytest.fail("tmux is not installed: this test needs it (apt-get install tmux)")
        self.tmux = [tmux, "-L", unique("amp-progress"), "-f", str(config)]
        config.write_text("set -g remain-on-exit on\n")
        self._run("new-session", "-d", "-x", "160", "-y", "40", "-s", "amp", shlex.join(command))
        self._tick = threading.Event()

    def _run(self, *args: str) -> str:
        done = subprocess.run([*self.tmux, *args], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, f"tmux {' '.join(args)}: {done.stderr}"
        return done.stdout

    def screen(self) -> str:
        """The visible screen, wrapped lines joined."""
        return self._run("capture-pane", "-p", "-J", "-t", "amp")

    def wait_until(self, found: Callable[[str], T | None], what: str, timeout: float = 90) -> T:
        """Poll the screen until ``found(screen)`` returns something; fail with the
        screen after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            result = found(screen)
            if result is not None:
                return result
            assert time.monotonic() < deadline, f"no {what} within {timeout} s:\n{screen}"
            self._tick.wait(0.1)

    def send_ctrl_c(self) -> None:
        self._run("send-keys", "-t", "amp", "C-c")

    def exit_status(self) -> int:
        """The command's exit status, once it ended (``pane`` has its shell print it:
        tmux's own ``pane_dead_status`` is at times empty)."""
        ended = self.wait_until(EXIT_STATUS.search, "end of the command")
        return int(ended["status"])

    def close(self) -> None:
        subprocess.run([*self.tmux, "kill-server"], capture_output=True, timeout=30)


@contextmanager
def pane(tmp_path: Path, *amp_args: str) -> Iterator[Pane]:
    # Without COLUMNS and LINES (set under pytest): rich reads the pane's own size.
    load = ["env", "-u", "COLUMNS", "-u", "LINES", f"PYTHONPATH={SOURCE}", str(AMP), *amp_args]
    # The shell traps Ctrl-C (amp gets it as usual) so that it lives to print the status.
    command = ["sh", "-c", f'trap : INT; {shlex.join(load)}; echo "amp exited with status $?"']
    terminal = Pane(command, tmp_path / "tmux.conf")
    try:
        yield terminal
    finally:
        terminal.close()


def _load_args(server: DevServer, table: str, *extra: str) -> tuple[str, ...]:
    return (
        "load",
        "--server",
        server.url,
        "--query",
        QUERY,
        "--to",
        PG_URL,
        "--table",
        table,
        "--stream",
        *extra,
    )


def test_the_streaming_line_in_a_terminal_and_a_clean_ctrl_c(
    pg_destination: Destination, tmp_path: Path
) -> None:
    table = pg_destination.new_table("progterm")
    line = re.compile(
        rf"^{table}: (?P<rows>{NUMBER}) rows \| (?P<rate>{NUMBER}) rows/s \| "
        rf"block (?P<block>{NUMBER}) of head (?P<head>{NUMBER}) "
        rf"\((?:at the head|(?P<behind>{NUMBER}) behind)\) \| microbatches {NUMBER} \| "
        r"reorgs 0\s*$",
        re.MULTILINE,
    )
    with DevServer(port=0, seed=12, initial_blocks=300, block_time=0.2, max_interval=50) as srv:
        first_head = srv.chain.head

        def streaming_line(screen: str) -> re.Match[str] | None:
            """The progress line, checked against the chain on every frame read; returned
            once it shows blocks mined after the start and a rows/s figure."""
            match = line.search(screen)
            if match is None:
                return None
            block, head = _int(match["block"]), _int(match["head"])
            assert block <= head, f"a block past the head:\n{screen}"
            assert head <= srv.chain.head, f"a head the chain has not reached:\n{screen}"
            if match["behind"] is not None:
                assert _int(match["behind"]) == head - block, screen
            if block > first_head + 10 and _int(match["rate"]) > 0:
                return match
            return None

        with pane(tmp_path, *_load_args(srv, table)) as terminal:
            shown = terminal.wait_until(streaming_line, "progress line streaming new blocks")
            assert 0 < _int(shown["rows"]) <= pg_destination.count(table)
            terminal.send_ctrl_c()
            summary = re.compile(
                rf"^loaded (?P<rows>{NUMBER}) rows into {table} \((?P<microbatches>\d+) "
                rf"microbatches, 0 reorgs handled; [\d,.]+ s, {NUMBER} rows/s on average\)$",
                re.MULTILINE,
            )
            ended = terminal.wait_until(summary.search, "summary after Ctrl-C")
            assert terminal.exit_status() == 0, terminal.screen()
            screen = terminal.screen()
        assert "stopping at the next microbatch boundary" in screen, screen
        assert "Traceback" not in screen and "interrupted" not in screen, screen
        last_block = pg_destination.query(f'SELECT max(_block_num) FROM "{table}"')[0][0]
        count = assert_table_equals_chain(pg_destination, table, srv.chain, "logs", upto=last_block)
        assert _int(ended["rows"]) == count


def test_the_parallel_bars_and_summary_in_a_terminal(
    pg_destination: Destination, tmp_path: Path
) -> None:
    table = pg_destination.new_table("progpar")
    with DevServer(port=0, seed=13, initial_blocks=1_200, max_interval=100) as srv:
        args = _load_args(srv, table, "--parallel", "2", "--max-block", "999")
        with pane(tmp_path, *args) as terminal:
            summary = re.compile(
                rf"^loaded (?P<rows>{NUMBER}) rows into {table}: 2 partitions \(2 done\); "
                rf"[\d,.]+ s, {NUMBER} rows/s on average$",
                re.MULTILINE,
            )
            ended = terminal.wait_until(summary.search, "parallel summary")
            assert terminal.exit_status() == 0, terminal.screen()
            screen = terminal.screen()
        count = assert_table_equals_chain(pg_destination, table, srv.chain, "logs", blocks=(0, 999))
        assert _int(ended["rows"]) == count
        lines = screen.splitlines()
        for worker, (start, end) in enumerate(((0, 499), (500, 999))):
            bars = [text for text in lines if text.startswith(f"partition {worker} ━")]
            assert len(bars) == 1, f"partition {worker}'s bar, once:\n{screen}"
            assert re.search(rf"━ 500/500 blocks +{NUMBER} rows +{NUMBER} rows/s +done$", bars[0])
            outcome = f"partition {worker} (blocks {start}..{end}): done, 500 of 500 blocks, "
            assert any(text.startswith(outcome) for text in lines), screen
        assert re.search(
            rf"^{table}: {count:,} rows \| {NUMBER} rows/s \| 2 partitions: 2 done$",
            screen,
            re.MULTILINE,
        ), screen
