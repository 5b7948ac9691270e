"""The single load's progress line (issue 12): rows/s over the last seconds, not since the
start; the head is never shown below a loaded block; the head tracker polls the real
dev server and takes a committed block past its last poll as the head."""

from __future__ import annotations

import threading
import time

from amp.client import Client
from amp.devserver import DevServer
from amp.progress import HeadTracker, LoadStats, head_query_for, pace, position, render


def test_rows_per_second_is_the_last_seconds_not_the_average_since_start() -> None:
    stats = LoadStats(started=0.0)
    assert stats.recent_rows_per_second(0.0) == 0.0
    stats.rows = 10_000
    assert stats.recent_rows_per_second(5.0) == 2_000
    # Six seconds with no commit: the window (5 s) holds only the stall. The average
    # since the start would still say 909 rows/s.
    assert stats.recent_rows_per_second(11.0) == 0.0
    stats.rows = 13_000
    assert stats.recent_rows_per_second(12.0) == 3_000 / 7  # from the sample at t=5
    assert pace(13_000, 13.0) == "13.0 s, 1,000 rows/s on average"


def test_the_line_never_shows_a_block_beyond_the_head() -> None:
    assert position(None, 1_000) == "no block yet"
    assert position(950, None) == "block 950"
    assert position(950, 1_000) == "block 950 of head 1,000 (50 behind)"
    assert position(1_000, 1_000) == "block 1,000 of head 1,000 (at the head)"
    assert position(1_050, 1_000) == "block 1,050 of head 1,050 (at the head)"
    stats = LoadStats(started=0.0, rows=1_234, microbatches=3, current_block=1_050)
    line = render(stats, 1_000, "logs", now=0.0).plain
    assert line == (
        "logs: 1,234 rows | 0 rows/s | block 1,050 of head 1,050 (at the head) | "
        "microbatches 3 | reorgs 0"
    )


def test_the_head_tracker_polls_the_server_and_takes_a_loaded_block_past_it() -> None:
    query = head_query_for("SELECT * FROM eth_firehose.logs")
    assert query is not None
    with DevServer(port=0, seed=5, initial_blocks=300) as server:
        client = Client(server.url)
        tracker = HeadTracker(client.transport, query)
        assert tracker.interval == 1.0
        tracker.start()
        try:
            deadline = time.monotonic() + 30
            tick = threading.Event()
            while tracker.head is None:
                assert time.monotonic() < deadline, "no head polled within 30 s"
                tick.wait(0.02)
            assert tracker.head == server.chain.head == 299
            tracker.observe(250)  # a block below the head changes nothing
            assert tracker.head == 299
            tracker.observe(320)  # committed before the next poll saw it: the head
            assert tracker.head == 320
        finally:
            tracker.stop()
            tracker.join(timeout=30)
            client.close()
    assert not tracker.is_alive()
