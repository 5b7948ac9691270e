"""Exactly once through crashes with commit grouping on (the default, which ``amp load``
keeps): while a load catches up a backfill, consecutive microbatches share one
transaction, so a SIGKILL can land in the middle of a group of them; the restart must
resume after the last committed group, and go on through reorgs at the head.

That groups were formed is read from PostgreSQL itself: the rows one transaction
inserted share its ``xmin``, and rows of more blocks than one microbatch holds under one
``xmin`` are a commit of several microbatches. The final catch-up commits each
microbatch alone, so every such commit is a killed load's.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from amp.devserver import DevServer
from crashkit import busy_chain_server, catch_up, crash_and_restart_amp_load, reorgs_handled
from kit import PG_DSN, PG_URL, SqlDestination, assert_table_equals_chain

CONNECTION = "crash_grouping"
MAX_INTERVAL = 20  # blocks per microbatch: a backfill of 250 of them
# Until the first kill, each data message waits this long: the backfill takes at least
# 250 of them (2 s), so the first kill (at most the harness's 1.5 s window after the
# start) lands in it however fast the machine loads. Then the latency goes: the next
# loads catch up at full speed, which is when microbatches are grouped (the next one is
# already waiting), and are killed in the middle of groups.
MESSAGE_LATENCY = 0.008


@pytest.fixture
def backfill_chain() -> Iterator[DevServer]:
    with busy_chain_server(initial_blocks=5_000, max_interval=MAX_INTERVAL) as server:
        server.faults.set_latency(MESSAGE_LATENCY)
        yield server


def _checkpoint_end(postgres: SqlDestination, table: str) -> int:
    """Where the committed rows end (-1: nothing committed yet)."""
    if not postgres.exists("amp_checkpoints"):
        return -1
    rows = postgres.query(
        "SELECT checkpoint_data FROM amp_checkpoints WHERE connection_name = %s "
        "AND table_name = %s",
        (CONNECTION, table),
    )
    return int(rows[0][0]["ranges"][-1]["end"]) if rows else -1


@pytest.mark.slow
def test_postgresql_grouped_commits_exactly_once_through_sigkills(
    backfill_chain: DevServer, postgres: SqlDestination
) -> None:
    chain = backfill_chain.chain
    backfill_head = chain.head
    table = postgres.new_table("crash_grouped")
    ends: list[int] = []  # where the committed rows ended after each kill

    def after_kill() -> None:
        ends.append(_checkpoint_end(postgres, table))
        backfill_chain.faults.set_latency(0)

    lines = crash_and_restart_amp_load(
        backfill_chain,
        PG_URL,
        table,
        CONNECTION,
        seed=23,
        after_kill=after_kill,
        until=lambda: ends[-1] > backfill_head,
    )

    assert ends[0] < backfill_head, "the first load was not killed in the backfill"
    assert ends[-1] > backfill_head, "the backfill never finished"
    assert reorgs_handled(lines), "no killed load handled a reorg at the head"
    grouped = postgres.query(
        f'SELECT count(*) FROM (SELECT xmin FROM "{table}" GROUP BY xmin '
        "HAVING max(block_num) - min(block_num) + 1 > %s) AS commits",
        (MAX_INTERVAL,),
    )[0][0]
    assert grouped > 0, "no commit of the killed loads held more than one microbatch"

    config = {"dsn": PG_DSN, "commit_grouping": {"enabled": False}}
    catch_up(backfill_chain, CONNECTION, "postgresql", config, table)
    assert len(chain.reorgs) >= 5, "the run should have seen reorgs"
    assert_table_equals_chain(postgres, table, chain)
