"""A streaming query's stream that ends without an error (the server shut down on
SIGTERM, a proxy closed an idle stream) is transient: amp reconnects with amp-resume
after the last committed microbatch, loses nothing and duplicates nothing."""

from __future__ import annotations

import logging

import pytest
from faultkit import (
    Destination,
    assert_contiguous_loads,
    fast_resilience,
    messages_of,
    microbatch_message_layout,
)

from amp.client import Client
from amp.devserver import DevServer
from kit import LOGS_QUERY, assert_table_equals_chain, drive

CONNECTION = "dest"


def test_streams_that_end_cleanly_are_resumed_and_the_load_equals_the_chain(
    srv: DevServer, client: Client, destination: Destination, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="amp")
    layout = microbatch_message_layout(srv, 50, 100)
    assert min(layout) >= 4, f"test setup: microbatches of at least 3 data messages: {layout}"
    # Each resumed stream starts after the last committed microbatch. The ends land:
    # inside microbatch 0; right after microbatch 0's marker; after the schema only;
    # inside microbatch 1 again; right after the schema and one data message.
    ends = [3, 1 + layout[0], 1, 3, 2]
    for messages in ends:
        srv.faults.end_stream_after(messages=messages)
    table = destination.new_table()
    destination.configure(client, CONNECTION, fast_resilience(max_retries=5))

    results = drive(client.sql(LOGS_QUERY).load(CONNECTION, table, stream=True), srv.chain).results

    assert_contiguous_loads(results, srv)
    assert_table_equals_chain(destination, table, srv.chain)
    assert not messages_of(caplog.records, "not retryable")
    assert not messages_of(caplog.records, "FATAL")
    retries = messages_of(caplog.records, "ended a streaming query")
    assert len(retries) == len(ends), retries
    assert all(m.startswith("Retry attempt ") for m in retries), retries
    assert srv.faults.take_stream_faults().end_after is None, "not every armed end was used"
