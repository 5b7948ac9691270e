"""``amp load --parallel N`` (issue 10) as a real subprocess against the dev server into
PostgreSQL: the destination equals the canonical chain, the summary names every
partition, Ctrl-C stops every worker at a microbatch boundary (a second one at once),
a failed partition exits 1 and the same command finishes it; wrong flags are refused
before anything connects."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable

import pytest
from oracle import Destination

from amp.devserver import DevServer
from amp.interrupts import interrupted_line
from ampcli import AmpProcess, amp
from kit import PG_HOST, PG_PORT, assert_table_equals_chain, canonical_count, checkpoint_ends
from kit.services import PG_DATABASE, PG_USER

pytestmark = pytest.mark.timeout(180)

QUERY = "SELECT * FROM eth_firehose.logs"
PG_URL = f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{PG_DATABASE}"
# ParallelConfig(num_workers=3, min_block=5, max_block=1_999) cuts these partitions.
SPANS = {0: (5, 669), 1: (670, 1_334), 2: (1_335, 1_999)}
BOUNDED = ("--parallel", "3", "--min-block", "5", "--max-block", "1999")
# Three workers over blocks 0..H = 580 (head 600, --reorg-buffer 20); the live one from 581.
HYBRID_SPANS = ((0, 193), (194, 387), (388, 580))


def _load(server: DevServer, table: str, *extra: str) -> tuple[str, ...]:
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
        "--checkpoint",
        "--idempotency",
        *extra,
    )


def _run(args: tuple[str, ...]) -> tuple[int, str]:
    with amp(*args) as process:
        return process.finish(timeout=120)


def _line(worker: int, status: str, done: int, rows: int) -> str:
    start, end = SPANS[worker]
    total = end - start + 1
    return (
        f"partition {worker} (blocks {start}..{end}): {status}, {done:,} of {total:,} blocks, "
        f"{rows:,} rows"
    )


def _wait_for_checkpoints(
    destination: Destination,
    table: str,
    ready: Callable[[dict[int, int]], bool],
    process: AmpProcess,
) -> dict[int, int]:
    """Poll the destination's checkpoints (worker -> last block) until ``ready`` holds;
    the load must still be running meanwhile."""
    deadline = time.monotonic() + 90
    tick = threading.Event()
    while True:
        ends = dict(checkpoint_ends(destination, table))
        if ready(ends):
            return ends
        assert process.popen.poll() is None, "the load ended:\n" + "".join(process.output)
        assert time.monotonic() < deadline, f"checkpoints {ends} after 90 s"
        tick.wait(0.05)


def test_parallel_load_equals_the_chain_and_the_summary_names_every_partition(
    pg_destination: Destination,
) -> None:
    table = pg_destination.new_table("clipar")
    with DevServer(port=0, seed=3, initial_blocks=2_500, max_interval=150) as srv:
        args = _load(srv, table, *BOUNDED)
        code, output = _run(args)
        assert code == 0, output
        count = assert_table_equals_chain(
            pg_destination, table, srv.chain, "logs", blocks=(5, 1_999)
        )
        for worker, (start, end) in SPANS.items():
            rows = canonical_count(srv.chain, start, end)
            assert _line(worker, "done", end - start + 1, rows) in output, output
            assert f"partition {worker} " in output  # the display's last frame: its bar
        assert output.count("665/665 blocks") == 3, output
        assert f"loaded {count:,} rows into {table}: 3 partitions (3 done)" in output
        assert "run the same command again" not in output

        # The same command again: the stored plan says every partition is done.
        code, output = _run(args)
        assert code == 0, output
        assert f"loaded 0 rows into {table}: 3 partitions (3 done)" in output
        assert_table_equals_chain(pg_destination, table, srv.chain, "logs", blocks=(5, 1_999))


def test_ctrl_c_stops_every_worker_at_a_boundary_and_the_same_command_finishes(
    pg_destination: Destination,
) -> None:
    """Latency keeps each partition streaming for seconds (10 blocks a microbatch, 0.1 s a
    message); once each has committed, Ctrl-C: each stops at a microbatch boundary, so the
    destination holds exactly each partition's blocks up to its checkpoint."""
    table = pg_destination.new_table("clipar")
    with DevServer(port=0, seed=6, initial_blocks=2_100, max_interval=10) as srv:
        srv.faults.set_latency(0.1)
        args = _load(srv, table, *BOUNDED, "--no-progress")
        with amp(*args) as process:
            _wait_for_checkpoints(pg_destination, table, lambda ends: len(ends) == 3, process)
            process.popen.send_signal(signal.SIGINT)
            code, output = process.finish(timeout=60)
        assert code == 0, output  # as the single load: a Ctrl-C stop is no failure
        assert "Traceback" not in output
        ends = dict(checkpoint_ends(pg_destination, table))
        reached = {worker: min(ends[worker], end) for worker, (_, end) in SPANS.items()}
        assert_table_equals_chain(
            pg_destination,
            table,
            srv.chain,
            "logs",
            blocks=[(start, reached[worker]) for worker, (start, _) in SPANS.items()],
        )
        stopped = 0
        for worker, (start, end) in SPANS.items():
            status = "done" if reached[worker] == end else "stopped"
            stopped += status == "stopped"
            rows = canonical_count(srv.chain, start, reached[worker])
            assert _line(worker, status, reached[worker] - start + 1, rows) in output, output
        assert stopped, "every partition finished before Ctrl-C; the test proves nothing"
        assert f"{stopped} partition(s) not done: run the same command again" in output

        srv.faults.set_latency(0)
        code, output = _run(args)
        assert code == 0, output
        assert "3 partitions (3 done)" in output
        assert_table_equals_chain(pg_destination, table, srv.chain, "logs", blocks=(5, 1_999))


def test_ctrl_c_stops_the_live_worker_too(pg_destination: Destination) -> None:
    """Without --max-block: H = 600 - 20, partitions cover 0..580 and a live worker
    streams from 581. Ctrl-C once it has reached the head: every worker stops, exit 0."""
    table = pg_destination.new_table("clipar")
    with DevServer(port=0, seed=5, initial_blocks=601, max_interval=50) as srv:
        args = _load(srv, table, "--parallel", "3", "--reorg-buffer", "20")
        with amp(*args) as process:
            _wait_for_checkpoints(
                pg_destination,
                table,
                lambda ends: (
                    ends.get(3) == 600
                    and all(ends.get(w, -1) >= end for w, (_, end) in enumerate(HYBRID_SPANS))
                ),
                process,
            )
            process.popen.send_signal(signal.SIGINT)
            code, output = process.finish(timeout=60)
        assert code == 0, output
        assert_table_equals_chain(pg_destination, table, srv.chain, "logs")
        rows = canonical_count(srv.chain, 581, 600)
        assert f"partition 3 (blocks 581..live): stopped, up to block 600, {rows:,} rows" in output
        for worker, (start, end) in enumerate(HYBRID_SPANS):
            assert f"partition {worker} (blocks {start}..{end}): done" in output, output
        assert "live " in output and "block 600" in output  # the live worker's line
        assert "1 partition(s) not done: run the same command again" in output


def test_a_failed_partition_exits_1_and_the_same_command_finishes_it(
    pg_destination: Destination,
) -> None:
    """The first call to the server is refused for good (INVALID_ARGUMENT): the worker
    that made it fails its partition; the others load theirs."""
    table = pg_destination.new_table("clipar")
    with DevServer(port=0, seed=7, initial_blocks=2_100, max_interval=150) as srv:
        srv.faults.fail_next("get_flight_info", "INVALID_ARGUMENT", times=1)
        args = _load(srv, table, *BOUNDED, "--no-progress")
        code, output = _run(args)
        assert code == 1, output
        assert "Traceback" not in output
        failed = [w for w in SPANS if f"partition {w} (blocks" in output and _failed(w, output)]
        assert len(failed) == 1, output
        done = [SPANS[w] for w in SPANS if w not in failed]
        assert_table_equals_chain(pg_destination, table, srv.chain, "logs", blocks=done)
        assert "INVALID_ARGUMENT" in output
        assert "1 partition(s) not done: run the same command again" in output
        assert "3 partitions (2 done, 1 failed)" in output

        code, output = _run(args)
        assert code == 0, output
        assert "3 partitions (3 done)" in output
        assert_table_equals_chain(pg_destination, table, srv.chain, "logs", blocks=(5, 1_999))


def _failed(worker: int, output: str) -> bool:
    start, end = SPANS[worker]
    return f"partition {worker} (blocks {start}..{end}): failed, 0 of" in output


def test_second_ctrl_c_ends_a_parallel_load_at_once(pg_destination: Destination) -> None:
    """Every worker backs off from a failing server (2 s, 4 s, 8 s ...): the first Ctrl-C
    asks them to stop, the second ends the process at once with one line and 130."""
    table = pg_destination.new_table("clipar")
    with DevServer(port=0, seed=1, initial_blocks=100) as srv:
        srv.faults.fail_next("get_flight_info", "UNAVAILABLE", times=1_000)
        args = _load(srv, table, "--parallel", "3", "--min-block", "10", "--max-block", "90")
        with amp(*args, "--no-progress") as process:
            process.wait_for("Backing off")
            process.popen.send_signal(signal.SIGINT)
            process.wait_for("Ctrl-C again")
            process.popen.send_signal(signal.SIGINT)
            code, output = process.finish(timeout=10)  # the backoffs left last a minute
    assert code == 130, output
    assert "Traceback" not in output
    assert output.strip().splitlines()[-1] == interrupted_line("load")


@pytest.mark.parametrize(
    ("query", "flags", "words"),
    [
        (QUERY, ("--parallel", "3"), "--parallel needs --stream"),
        (QUERY, ("--parallel", "0", "--stream"), "num_workers must be >= 1, got 0 (--parallel"),
        (
            QUERY,
            ("--parallel", "2", "--stream", "--min-block", "9", "--max-block", "3"),
            "min_block (9) is after max_block (3)",
        ),
        (
            QUERY,
            ("--parallel", "2", "--stream", "--partition-size", "0"),
            "partition_size must be >= 1, got 0 (--partition-size sets partition_size)",
        ),
        (QUERY, ("--stream", "--max-block", "3"), "--max-block: only for a parallel load"),
        ("SELECT 1 AS one", ("--parallel", "2", "--stream"), "--partition-table"),
        (
            QUERY,
            ("--parallel", "2", "--stream", "--mode", "overwrite"),
            "a parallel load appends only",
        ),
    ],
    ids=[
        "no-stream",
        "zero-workers",
        "min-after-max",
        "zero-size",
        "no-parallel",
        "no-dataset",
        "overwrite",
    ],
)
def test_wrong_parallel_flags_are_refused_before_connecting(
    query: str, flags: tuple[str, ...], words: str
) -> None:
    """The server and the destination do not exist: a refusal comes before any connection."""
    code, output = _run(
        (
            "load",
            "--server",
            "grpc://127.0.0.1:1",
            "--query",
            query,
            "--to",
            "postgresql://postgres@127.0.0.1:1/none",
            "--table",
            "t",
            *flags,
        )
    )
    assert code == 2, output
    assert words in output, output
    assert "Traceback" not in output
