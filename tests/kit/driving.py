"""Drive a streaming load from its own results, against the dev server's chain.

No sleeps: the dev server sends nothing until the chain changes, so "the last result is
a microbatch ending at the canonical head" is a stable state. ``drive`` changes the chain
(the next action) each time the load reaches it, and stops after the last change. A
watchdog stops a load that neither fails nor catches up, and ``max_results`` one that
reloads forever, so a broken load fails its test instead of hanging it.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from amp.client import Client, LoadResult, LoadRun
from amp.devserver import DevServer
from amp.devserver.chain import SimulatedChain
from amp.streaming.types import hex_hash
from kit.chain import ChainChange
from kit.services import LOGS_QUERY

MAX_RESULTS = 2_000
WATCHDOG_SECONDS = 120.0

Action = Callable[[SimulatedChain], object]
# Called with each result; returning True ends the drive there.
OnResult = Callable[[LoadResult], object]


def operation(result: LoadResult) -> str:
    return str(result.metadata.get("operation"))


def block_range(result: LoadResult) -> dict[str, Any]:
    """The one block range of a streaming load result."""
    ranges = result.metadata.get("block_ranges")
    assert isinstance(ranges, list) and len(ranges) == 1, f"bad block_ranges: {result.metadata}"
    return ranges[0]


def caught_up(result: LoadResult, chain: SimulatedChain) -> bool:
    """A committed (or skipped) microbatch that ends at the current canonical head."""
    if operation(result) not in ("load", "skip_duplicate"):
        return False
    end = block_range(result)
    head = chain.head
    return end["end"] == head and end["hash"] == hex_hash(chain.canonical_hash(head))


@dataclass
class Driven:
    """The results of one drive, in order."""

    results: list[LoadResult] = field(default_factory=list)

    def of(self, kind: str) -> list[LoadResult]:
        return [r for r in self.results if operation(r) == kind]

    def loads(self) -> list[LoadResult]:
        return self.of("load")

    def reorgs(self) -> list[LoadResult]:
        return self.of("reorg")

    def ranges(self, kind: str = "load") -> list[tuple[int, int]]:
        return [(block_range(r)["start"], block_range(r)["end"]) for r in self.of(kind)]

    def first_range(self) -> dict[str, Any]:
        return block_range(self.loads()[0])


def collect(
    run: LoadRun,
    chain: SimulatedChain,
    actions: Sequence[Action] = (),
    on_result: OnResult | None = None,
    *,
    max_results: int = MAX_RESULTS,
    seconds: float = WATCHDOG_SECONDS,
) -> tuple[Driven, BaseException | None]:
    """Iterate ``run``; each time it has caught up, apply the next action; end once it
    caught up after the last one (or ``on_result`` returned True). Returns the results
    and the exception that ended the load early (None: it got where it was driven).
    Closes ``run`` whatever happens."""
    driven = Driven()
    remaining = deque(actions)
    timed_out = threading.Event()

    def watchdog() -> None:
        timed_out.set()
        run.stop()

    timer = threading.Timer(seconds, watchdog)
    timer.daemon = True
    timer.start()
    try:
        for result in run:
            driven.results.append(result)
            if on_result is not None and on_result(result) is True:
                return driven, None
            if caught_up(result, chain):
                if not remaining:
                    return driven, None
                remaining.popleft()(chain)
            assert len(driven.results) < max_results, (
                f"{max_results} results without catching up; last: {driven.ranges()[-5:]}"
            )
        if timed_out.is_set():
            raise AssertionError(
                f"the load neither failed nor caught up with head {chain.head} within "
                f"{seconds:g} s (last ranges {driven.ranges()[-5:]})"
            )
        raise AssertionError(
            f"the streaming load ended by itself after {len(driven.results)} results; it "
            "only ends when stopped"
        )
    except Exception as exc:
        return driven, exc
    finally:
        timer.cancel()
        run.close()


def drive(
    run: LoadRun,
    chain: SimulatedChain,
    actions: Sequence[Action] = (),
    on_result: OnResult | None = None,
    **options: Any,
) -> Driven:
    """``collect`` a load that must succeed: its exception, if any, is raised again."""
    driven, error = collect(run, chain, actions, on_result, **options)
    if error is not None:
        raise error
    failed = [r.error for r in driven.results if not r.success]
    assert not failed, f"the load reported a failure: {failed}"
    return driven


@contextmanager
def connected(
    server: DevServer, name: str, loader: str, config: Mapping[str, Any]
) -> Iterator[Client]:
    """A client of ``server`` with connection ``name`` configured; closed on exit."""
    client = Client(server.url)
    try:
        client.configure_connection(name, loader, dict(config))
        yield client
    finally:
        client.close()


def load_to_head(
    server: DevServer,
    name: str,
    loader: str,
    config: Mapping[str, Any],
    table: str,
    actions: Sequence[Action] = (),
    on_result: OnResult | None = None,
    *,
    query: str = LOGS_QUERY,
    mode: str = "append",
    **options: Any,
) -> Driven:
    """One run of a streaming load from a fresh client: start, drive to the head
    (through ``actions``), stop. A restart is another call with the same name."""
    with connected(server, name, loader, config) as client:
        run = client.sql(query).load(name, table, stream=True, mode=mode)
        return drive(run, server.chain, actions, on_result, **options)


def assert_reorgs_reported(
    driven: Driven, changes: Sequence[ChainChange], max_interval: int | None = None
) -> None:
    """One 'reorg' result per change, in order, deleting the rows the destination held
    for the replaced blocks. With ``max_interval`` the invalidated range must be §3's
    exactly; without, it must start at the fork and reach the old head."""
    reported = driven.reorgs()
    assert len(reported) == len(changes), (
        f"{len(changes)} reorgs made, {len(reported)} reported: {[r.metadata for r in reported]}"
    )
    for made, result in zip(changes, reported, strict=True):
        invalidated = result.metadata["invalidated_range"]
        assert invalidated["network"] == "mainnet", invalidated
        span = (invalidated["start"], invalidated["end"])
        if max_interval is not None:
            assert span == made.invalidated(max_interval), (
                f"{made} at head {made.old_head}: expected invalidated "
                f"{made.invalidated(max_interval)}, got {invalidated}"
            )
        else:
            assert span[0] == made.fork_height and span[1] >= made.old_head, (made, invalidated)
        assert result.metadata["rows_deleted"] == made.rows_replaced, (
            f"{made} at head {made.old_head}: the destination held {made.rows_replaced} rows "
            f"of the replaced blocks, rows_deleted says {result.metadata['rows_deleted']}"
        )
        assert result.rows_loaded == 0
