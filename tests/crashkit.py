"""The crash harness shared by every destination's crash test: start a real load process,
kill it with SIGKILL at a random moment once it runs, and do it again, ``kills`` times.

A load process must log ``Loading checkpoint for connection=<name>`` (at INFO, on stderr)
when it starts; the harness waits for that line, then for a random delay (the moment of
the kill is the experiment's input), then kills it. A parallel load (``amp load
--parallel``) logs it while it reads its stored plan's checkpoints, or, at its first
start, once its workers start (after the plan is stored).
"""

from __future__ import annotations

import random
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import pytest

from amp.cli import build_parser
from amp.cli_parallel import parallel_config
from amp.client import LoadResult, LoadRun
from amp.devserver import DevServer
from amp.devserver.chain import ReorgEvent, SimulatedChain
from amp.streaming.parallel import ParallelConfig
from kit import Driven, Row, block_range, caught_up, connected, load_to_head, operation
from kit.chain import assert_equals_canonical
from kit.driving import WATCHDOG_SECONDS


def amp_load_command(server_url: str, query: str, destination: str, table: str,
                     connection: str) -> list[str]:  # fmt: skip
    """``amp load`` streaming with checkpoints and idempotency, without the progress line."""
    return [
        sys.executable, "-m", "amp.cli", "load", "--server", server_url, "--query", query,
        "--to", destination, "--table", table, "--stream", "--checkpoint", "--idempotency",
        "--no-progress", "--connection-name", connection,
    ]  # fmt: skip


class LoadProcess:
    """A load in a child process; its stderr is read by a thread (no pipe stalls)."""

    def __init__(self, command: Sequence[str], connection: str) -> None:
        self.started_line = f"Loading checkpoint for connection={connection}"
        self.process = subprocess.Popen(
            list(command), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        self.lines: list[str] = []
        self.started = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            if self.started_line in line:
                self.started.set()
        self.started.set()  # the process ended: let the waiter look at why

    def fail_if_exited(self, attempt: int) -> None:
        if self.process.poll() is not None:
            pytest.fail(f"the load exited by itself (attempt {attempt}):\n{''.join(self.lines)}")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self._reader.join(timeout=30)


def crash_and_restart(
    command: Sequence[str],
    connection: str,
    seed: int,
    kills: int = 20,
    window: float = 1.5,
    after_kill: Callable[[], None] | None = None,
    until: Callable[[], bool] | None = None,
) -> list[str]:
    """Start the load and kill it ``kills`` times, each time within ``window`` seconds
    after it started (spanning writes, commits, reorgs and waits for new blocks), calling
    ``after_kill`` after each kill. Returns what the loads logged, run after run.

    ``until``: the progress the test's assertions need of the killed loads (e.g. past the
    initial head). On a machine slow enough that no load gets there within its window,
    up to EXTRA_KILLS more runs are killed, each window twice the last (at most
    MAX_WINDOW s), until it holds: the kills stay random, the test still fails if it
    never holds, and a fast machine runs exactly ``kills``."""
    rng = random.Random(seed)
    lines: list[str] = []
    windows = [window] * kills
    attempt = 0
    while attempt < len(windows):
        load = LoadProcess(command, connection)
        try:
            assert load.started.wait(timeout=60), "the load did not start within 60 s"
            load.fail_if_exited(attempt)
            threading.Event().wait(rng.uniform(0.0, windows[attempt]))
            load.fail_if_exited(attempt)
        finally:
            load.kill()
            lines.extend(load.lines)
        if after_kill is not None:
            after_kill()
        attempt += 1
        more = len(windows) - kills < EXTRA_KILLS
        if attempt == len(windows) and until is not None and more and not until():
            windows.append(min(windows[-1] * 2, MAX_WINDOW))
    return lines


# Kills beyond the asked number while ``until`` does not hold, and their longest window.
EXTRA_KILLS = 8
MAX_WINDOW = 8.0


CRASH_QUERY = "SELECT * FROM eth_firehose.logs"


def busy_chain_server(
    initial_blocks: int, max_interval: int = 300, reorg_depth: int = 4, txs_per_block: int = 30
) -> DevServer:
    """A chain that grows 20 blocks a second with a reorg of ``reorg_depth`` blocks every
    15 blocks, served in microbatches of at most ``max_interval`` blocks."""
    return DevServer(
        port=0,
        seed=7,
        initial_blocks=initial_blocks,
        max_interval=max_interval,
        block_time=0.05,
        reorg_every=15,
        reorg_depth=reorg_depth,
        mean_txs_per_block=txs_per_block,
    )


def crash_and_restart_amp_load(
    server: DevServer,
    destination: str,
    table: str,
    connection: str,
    seed: int,
    query: str = CRASH_QUERY,
    after_kill: Callable[[], None] | None = None,
    flags: Sequence[str] = (),
    window: float = 1.5,
    until: Callable[[], bool] | None = None,
) -> list[str]:
    """``crash_and_restart`` of ``amp load`` streaming ``query`` into ``destination``,
    with more ``flags`` (``--parallel ...``)."""
    command = [*amp_load_command(server.url, query, destination, table, connection), *flags]
    return crash_and_restart(
        command, connection, seed, window=window, after_kill=after_kill, until=until
    )


# The loop's line for each reorg it handled: "Reorg on <network>: blocks A..B invalidated".
_REORG_LINE = re.compile(r"Reorg on \S+: blocks (\d+)\.\.(\d+) invalidated")


def reorgs_handled(lines: Sequence[str]) -> list[tuple[int, int]]:
    """The invalidated ranges of the reorgs the killed loads handled, from their logs."""
    return [(int(a), int(b)) for a, b in _REORG_LINE.findall("".join(lines))]


def catch_up(
    server: DevServer,
    connection: str,
    loader: str,
    config: Mapping[str, object],
    table: str,
    query: str = CRASH_QUERY,
) -> Driven:
    """With block production stopped, run the load in-process (checkpoints and
    idempotency on) until it reaches the head. One more block is mined first, so there is
    always a microbatch to reach the head with, even when a killed run committed the last."""
    server.stop_block_production()
    server.chain.mine(1)
    features = {**config, "checkpoint": {"enabled": True}, "idempotency": {"enabled": True}}
    return load_to_head(server, connection, loader, features, table, query=query)


# -- queries without a block column -------------------------------------------------------

# No block number in the rows: amp keys them by their microbatch's range
# (_amp_block_start, _amp_block_end), and a reorg deletes whole microbatches.
RANGE_QUERY = "SELECT block_hash, tx_hash, log_index, data FROM eth_firehose.logs"
RANGE_COLUMNS = ("tx_hash", "log_index", "block_hash", "data")
RANGE_INTERVAL = 10
# Deeper than a microbatch: a reorg reaches back past the start of the one it hits.
RANGE_REORG_DEPTH = 12


def range_keyed_chain_server() -> DevServer:
    """``busy_chain_server`` in microbatches of RANGE_INTERVAL blocks, reorgs of
    RANGE_REORG_DEPTH, and few enough rows that even the slowest destination's killed
    loads reach the head among the reorgs."""
    return busy_chain_server(
        200, max_interval=RANGE_INTERVAL, reorg_depth=RANGE_REORG_DEPTH, txs_per_block=10
    )


def assert_range_keyed_exactly_once(
    rows: Sequence[Row], chain: SimulatedChain, lines: Sequence[str], what: str
) -> None:
    """``rows`` (RANGE_COLUMNS, then ``_amp_block_start``, ``_amp_block_end``; normalised)
    are the canonical logs exactly once, each inside the range it was stored under; and
    the killed loads handled reorgs deeper than a microbatch, some forking inside one."""
    handled = reorgs_handled(lines)
    deep = [span for span in handled if span[1] - span[0] + 1 > RANGE_INTERVAL]
    assert deep, f"no killed load handled a reorg deeper than {RANGE_INTERVAL} blocks"
    # A fork inside a stored microbatch deletes it whole: the invalidation starts before
    # the fork, where that microbatch began.
    forks = {event.fork_height for event in chain.reorgs}
    assert [span for span in handled if span[0] not in forks], (
        "no reorg forked inside a stored microbatch"
    )
    assert len(chain.reorgs) >= 5, "the run should have seen reorgs"
    assert_equals_canonical([row[:4] for row in rows], chain, "logs", RANGE_COLUMNS, 2, what)
    blocks = chain.canonical_table("blocks").select(["hash", "block_num"]).to_pydict()
    number_of = dict(zip(blocks["hash"], blocks["block_num"], strict=True))
    outside = [row for row in rows if not row[4] <= number_of[row[2]] <= row[5]]
    assert not outside, (
        f"{len(outside)} rows stored under a range that does not hold their block, e.g. "
        f"{[(number_of[r[2]], r[4], r[5]) for r in outside[:3]]}"
    )


# -- parallel loads (``amp load --parallel``) ---------------------------------------------


def parallel_config_of(flags: Sequence[str], query: str = CRASH_QUERY) -> ParallelConfig:
    """The ParallelConfig ``amp load`` builds from its parallel ``flags`` for ``query``: a
    later run of the same load must ask for the plan the killed loads stored, or it is
    refused. (Only the parser runs; nothing is contacted.)"""
    args = build_parser().parse_args(
        ["load", "--server", "grpc://unused", "--query", query, "--to", "unused://",
         "--table", "unused", "--stream", *flags]
    )  # fmt: skip
    config = parallel_config(args)
    assert config is not None, f"no --parallel in {flags}"
    return config


class DeepReorgs:
    """While the killed loads run: now and then (every 1 to 3 s) a reorg that forks at a
    block of ``forks`` (below the hand-off block of a hybrid parallel load) and replaces
    everything from there to the head, on top of the dev server's own reorgs at the head.
    A context manager; ``made`` are the reorgs it made."""

    def __init__(self, chain: SimulatedChain, forks: tuple[int, int], seed: int) -> None:
        self.chain = chain
        self.forks = forks
        self.rng = random.Random(seed)
        self.made: list[ReorgEvent] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="deep-reorgs", daemon=True)

    def _run(self) -> None:
        # The thread's clock is the workload's, like the dev server's block producer.
        while not self._stop.wait(self.rng.uniform(1.0, 3.0)):
            fork = self.rng.randint(*self.forks)
            with self.chain.changed:  # the head does not move between reading and forking
                self.made.append(self.chain.reorg(self.chain.head - fork + 1))

    def __enter__(self) -> DeepReorgs:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def _partitions_done(run: LoadRun, results: Sequence[LoadResult]) -> bool:
    """Every bounded partition committed its last block: done before this run, or one
    of its results reached it (its state may say so only after that result)."""
    assert run.partitions is not None
    reached = set()
    for result in results:
        last = result.metadata["partition"]["end"]  # None: the live worker
        loaded = operation(result) in ("load", "skip_duplicate")
        if loaded and last is not None and block_range(result)["end"] >= last:
            reached.add(result.metadata["worker_id"])
    return all(
        state.status == "done" or worker in reached
        for worker, state in run.partitions.items()
        if not state.partition.live
    )


def _live_caught_up(run: LoadRun, results: Sequence[LoadResult], chain: SimulatedChain) -> bool:
    assert run.partitions is not None
    live = [worker for worker, state in run.partitions.items() if state.partition.live]
    ours = [r for r in results if r.metadata["worker_id"] in live]
    return bool(ours) and caught_up(ours[-1], chain)


def finish_parallel_load(
    server: DevServer,
    connection: str,
    loader: str,
    config: Mapping[str, object],
    table: str,
    parallel: ParallelConfig,
) -> list[LoadResult]:
    """The run after the kills, in-process (checkpoints and idempotency on), with block
    production stopped. A bounded load must end by itself, the chain having passed its
    max_block (by 3 blocks, which it must leave out); a hybrid one must finish every
    partition and bring the live worker to the head (one more block is mined, so the
    live worker always has a microbatch to reach it with)."""
    server.stop_block_production()
    chain = server.chain
    bounded = parallel.max_block is not None
    chain.mine(max(parallel.max_block - chain.head, 0) + 3 if bounded else 1)
    features = {**config, "checkpoint": {"enabled": True}, "idempotency": {"enabled": True}}
    results: list[LoadResult] = []
    timed_out = threading.Event()
    with connected(server, connection, loader, features) as client:
        run = client.sql(CRASH_QUERY).load(connection, table, stream=True, parallel_config=parallel)
        timer = threading.Timer(WATCHDOG_SECONDS, lambda: (timed_out.set(), run.stop()))
        timer.daemon = True
        timer.start()
        try:
            for result in run:
                assert result.success, f"the final run failed: {result.error}"
                results.append(result)
                done = not bounded and _partitions_done(run, results)
                if done and _live_caught_up(run, results, chain):
                    break
            else:
                assert bounded, "the hybrid load ended by itself; it only ends when stopped"
        finally:
            timer.cancel()
            run.close()
    assert not timed_out.is_set(), (
        f"the final run did not finish within {WATCHDOG_SECONDS:g} s (head {chain.head}): "
        f"{ {w: (s.status, s.committed) for w, s in (run.partitions or {}).items()} }"
    )
    return results


# A stream's committed checkpoint document, as a new process reads it: (the table, or
# "<table>/parallel-plan" for the plan, worker id) -> the document or None.
CheckpointRead = Callable[[str, int], dict[str, Any] | None]


def checkpoint_readers(
    read: CheckpointRead, table: str
) -> tuple[Callable[[], dict[str, Any] | None], Callable[[], dict[int, int]]]:
    """``ParallelCrash``'s ``read_plan`` and ``read_ends`` over ``read``."""

    def read_plan() -> dict[str, Any] | None:
        return read(f"{table}/parallel-plan", 0)

    def read_ends() -> dict[int, int]:
        plan = read_plan()
        assert plan is not None
        documents = {n: read(table, n) for n, _, _ in plan["partitions"]}
        return {n: int(d["ranges"][-1]["end"]) for n, d in documents.items() if d is not None}

    return read_plan, read_ends


@dataclass
class ParallelCrash:
    """A crash case of ``amp load --parallel`` (``flags``) of CRASH_QUERY into ``url``,
    ``table``: the same destination as amp's ``loader`` and its ``config`` (for the final
    run), and how its stored plan (``read_plan``) and checkpoints (``read_ends``: worker
    id -> last block) are read back."""

    server: DevServer
    url: str
    table: str
    connection: str
    flags: list[str]
    loader: str
    config: Mapping[str, object]
    read_plan: Callable[[], dict[str, Any] | None]
    read_ends: Callable[[], dict[int, int]]
    # Each kill within this many seconds of the start: a destination whose commits (of
    # a second's microbatches, grouped in the backfill) take longer needs a longer one.
    window: float = 1.5

    def unfinished(self) -> list[int]:
        """The bounded partitions whose checkpoint has not reached their last block."""
        plan = self.read_plan()
        assert plan is not None, "a killed load started without storing its plan"
        ends = self.read_ends()
        return [n for n, _, end in plan["partitions"] if end is not None and ends.get(n, -1) < end]

    def crash(self, forks: tuple[int, int], seed: int) -> tuple[list[str], list[Progress]]:
        """Kill and restart the load 20 times while ``DeepReorgs`` fork at ``forks``.
        Returns what the loads logged, and (from the start, then after each kill) how
        many deep reorgs had been made and which partitions were unfinished."""
        seen: list[Progress] = [(0, [0, 1, 2])]
        with DeepReorgs(self.server.chain, forks, seed + 1) as deep:
            lines = crash_and_restart_amp_load(
                self.server, self.url, self.table, self.connection, seed, flags=self.flags,
                window=self.window,
                after_kill=lambda: seen.append((len(deep.made), self.unfinished())),
                until=lambda: not seen[-1][1],
            )  # fmt: skip
        return lines, seen

    def finish(self) -> list[int]:
        """``finish_parallel_load``; returns the workers that had something left to do."""
        results = finish_parallel_load(
            self.server, self.connection, self.loader, self.config, self.table,
            parallel_config_of(self.flags),
        )  # fmt: skip
        return sorted({r.metadata["worker_id"] for r in results})

    def hybrid(self, lowest_handoff: int, seed: int) -> list[str]:
        """The hybrid case (flags without --max-block) up to the comparison of the
        destination with the chain: the kills hit the backfill while reorgs below H
        arrived (``lowest_handoff``: the head minus --reorg-buffer before the first
        start, so H is at least that), and the live worker after it, which took blocks
        below H over; the final run leaves the plan and a checkpoint per worker.
        Returns what the killed loads logged."""
        lines, seen = self.crash((lowest_handoff - 30, lowest_handoff), seed)
        assert deep_reorgs_during_backfill(seen), f"no reorg below H in the backfill: {seen}"
        assert not seen[-1][1], f"the killed loads never finished the backfill: {seen}"
        taken_over = [line for line in lines if f"..live){TAKEN_OVER}" in line]
        assert taken_over, "no live worker took over blocks below H"
        assert reorgs_handled(lines), "no killed load handled a reorg"
        self.finish()
        plan = self.assert_plan_and_checkpoints()
        assert plan["handoff"] >= lowest_handoff, plan
        assert [end for _, _, end in plan["partitions"]][-2:] == [plan["handoff"], None]
        assert len(self.server.chain.reorgs) >= 5, "the run should have seen reorgs"
        return lines

    def assert_plan_and_checkpoints(self) -> dict[str, Any]:
        """The stored plan, and one checkpoint per worker: at or past its partition's
        last block, the live worker's at the head. Returns the plan."""
        plan = self.read_plan()
        assert plan is not None, "no parallel plan stored"
        ends = self.read_ends()
        numbers = [number for number, _, _ in plan["partitions"]]
        assert sorted(ends) == numbers, f"checkpoints {ends} for partitions {numbers}"
        head = self.server.chain.head
        for number, _, end in plan["partitions"]:
            reached = ends[number] == head if end is None else ends[number] >= end
            assert reached, f"partition {number} (last block {end}): checkpoint {ends[number]}"
        return plan


# What a parallel load logs when a worker's stream reports a reorg below its first block
# ("partition 3 (blocks 5991..live): a reorg reaches block ...").
TAKEN_OVER = ": a reorg reaches block"
# After a kill: how many deep reorgs had been made, and the unfinished partitions.
Progress = tuple[int, list[int]]


def deep_reorgs_during_backfill(seen: Sequence[Progress]) -> bool:
    """Whether a deep reorg was made after a kill that found partitions unfinished and
    before the next kill: while the backfill still ran, at least when that run started
    (``seen`` as ``ParallelCrash.crash`` returns it, the start first)."""
    return any(
        after > before and unfinished_before
        for (before, unfinished_before), (after, _) in pairwise(seen[1:])
    )
