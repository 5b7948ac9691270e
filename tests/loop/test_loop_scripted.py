"""The load loop driven through its transport seam by scripted message sequences.

No network: ``ScriptedTransport`` plays exactly what a server could send, and the rows
land in the real PostgreSQL, so commit grouping, replays and reverts are checked against
what the destination actually holds when each result is yielded.
"""

from __future__ import annotations

from loop_support import block_hash, drain, microbatch, scripted_load, table_rows

from amp.errors import ServerError
from amp.flight.scripted import PAUSE
from amp.loop import CommitGrouping


def test_catching_up_microbatches_share_one_commit(admin, table) -> None:  # type: ignore[no-untyped-def]
    script = [*microbatch(0, 1), *microbatch(2, 3), *microbatch(4, 5), PAUSE]
    load, _, _ = scripted_load(table, [script], CommitGrouping())
    seen: list[int] = []
    assert drain(load, 3, seen, admin, table) == ["load"] * 3
    assert seen == [6, 6, 6]  # all three were committed before the first was reported
    checkpoint = admin.execute(
        "SELECT checkpoint_data FROM amp_checkpoints WHERE table_name = %s", (table,)
    ).fetchone()
    assert checkpoint is not None and checkpoint[0]["ranges"][0]["end"] == 5


def test_without_grouping_each_microbatch_commits_alone(admin, table) -> None:  # type: ignore[no-untyped-def]
    script = [*microbatch(0, 1), *microbatch(2, 3), *microbatch(4, 5), PAUSE]
    load, _, _ = scripted_load(table, [script], CommitGrouping(enabled=False))
    seen: list[int] = []
    drain(load, 3, seen, admin, table)
    assert seen == [2, 4, 6]


def test_at_the_head_a_pause_commits_at_once(admin, table) -> None:  # type: ignore[no-untyped-def]
    script = [*microbatch(0, 1), PAUSE, *microbatch(2, 3), PAUSE, *microbatch(4, 5), PAUSE]
    load, _, _ = scripted_load(table, [script], CommitGrouping())
    seen: list[int] = []
    drain(load, 3, seen, admin, table)
    assert seen == [2, 4, 6]


def test_a_drop_inside_a_group_rolls_it_back_and_resumes_after_the_last_commit(
    admin,
    table,  # type: ignore[no-untyped-def]
) -> None:
    first = [*microbatch(0, 1), PAUSE, *microbatch(2, 3), *microbatch(4, 5)]
    first += [microbatch(6, 7)[0], ServerError("connection reset", "UNAVAILABLE")]
    second = [*microbatch(2, 3), *microbatch(4, 5), *microbatch(6, 7), PAUSE]
    load, transport, _ = scripted_load(table, [first, second], CommitGrouping())
    load.server.backoff.config = load.server.backoff.config.__class__(
        initial_backoff_ms=1, max_backoff_ms=1
    )
    assert drain(load, 4) == ["load"] * 4
    assert transport.calls[1][2] == {"mainnet": {"number": 1, "hash": block_hash(1)}}
    assert table_rows(admin, table) == [(b, b * 10) for b in range(8)]


def test_a_reorg_after_grouped_microbatches_commits_them_then_reverts(
    admin,
    table,  # type: ignore[no-untyped-def]
) -> None:
    script = [*microbatch(0, 1), *microbatch(2, 3), *microbatch(4, 5)]
    script += [*microbatch(4, 5, fork=1, parent_fork=0), PAUSE]
    load, _, _ = scripted_load(table, [script], CommitGrouping())
    assert drain(load, 5) == ["load", "load", "load", "reorg", "load"]
    assert table_rows(admin, table) == [(0, 0), (1, 10), (2, 20), (3, 30), (4, 41), (5, 51)]
