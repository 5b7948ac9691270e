"""A server that breaks protocol §2-§3 mid-load: a repeated ranges_complete marker is
ignored (never a reorg that deletes committed rows); a second network is a
ProtocolError that commits nothing of the microbatch it arrived in."""

from __future__ import annotations

from faultkit import (
    Destination,
    assert_contiguous_loads,
    fast_resilience,
    microbatch_message_layout,
    oracle_keys,
)

from amp.client import Client
from amp.devserver import DevServer
from amp.errors import FatalLoadError, ProtocolError
from kit import LOGS_QUERY, assert_table_equals_chain, block_range, collect, drive

CONNECTION = "dest"


def test_a_repeated_marker_loses_no_rows(
    srv: DevServer, client: Client, destination: Destination
) -> None:
    """Every marker of the stream is sent twice: before the fix each repeat was taken
    for a reorg of its own range, whose committed rows were deleted for good."""
    srv.faults.repeat_marker_next(times=4)
    table = destination.new_table()
    destination.configure(client, CONNECTION, fast_resilience())

    results = drive(client.sql(LOGS_QUERY).load(CONNECTION, table, stream=True), srv.chain).results

    ranges = assert_contiguous_loads(results, srv)  # only loads: no reorg result
    assert len(ranges) == 4
    assert_table_equals_chain(destination, table, srv.chain)


def test_a_second_network_mid_microbatch_commits_nothing_of_it(
    srv: DevServer, client: Client, destination: Destination
) -> None:
    """Message 2 of microbatch 1 (blocks 50..99) names another network, after its first
    data message was written into the open transaction: the load stops with the
    ProtocolError as cause, and the destination holds microbatch 0 and nothing else."""
    layout = microbatch_message_layout(srv, 50, 100)
    assert layout[1] >= 3, f"test setup: microbatch 1 needs 2 data messages: {layout}"
    srv.faults.foreign_network_at(message=1 + layout[0] + 1, network="sepolia")
    table = destination.new_table()
    destination.configure(client, CONNECTION, fast_resilience())

    driven, error = collect(client.sql(LOGS_QUERY).load(CONNECTION, table, stream=True), srv.chain)
    results = driven.results

    assert isinstance(error, FatalLoadError), repr(error)
    assert isinstance(error.__cause__, ProtocolError), repr(error.__cause__)
    assert "one network per stream" in str(error)
    loads = [r for r in results if r.metadata.get("operation") == "load"]
    assert [(block_range(r)["start"], block_range(r)["end"]) for r in loads] == [(0, 49)]
    assert sorted(destination.keys(table)) == sorted(oracle_keys(srv, 0, 49))
    assert not [key for key in destination.keys(table) if key[0] >= 50]
