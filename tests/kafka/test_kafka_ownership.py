"""One writer per stream on Kafka (issue 9, defect 5): transactional.id fencing.

A second load of the same (connection, table, worker) starts a producer with the same
``transactional.id``, which fences the first: for Kafka the newer load wins, and the
older one stops with a StreamOwnedError saying so, never retried, never writing again.
"""

from __future__ import annotations

import pytest

from amp.client import LoadRun
from amp.devserver import DevServer
from amp.errors import StreamOwnedError
from kafkakit import kafka_config
from kit import LOGS_QUERY, caught_up, connected


def run_until_caught_up(run: LoadRun, server: DevServer) -> None:
    for result in run:
        assert result.success, result.error
        if caught_up(result, server.chain):
            return
    raise AssertionError("the load ended by itself")


def test_the_newer_load_fences_the_older_which_stops(
    chain_server: DevServer, bootstrap: str
) -> None:
    config = kafka_config(bootstrap)
    with (
        connected(chain_server, "k", "kafka", config) as older,
        connected(chain_server, "k", "kafka", config) as newer,
    ):
        older_run = older.sql(LOGS_QUERY).load("k", "logs", stream=True)
        run_until_caught_up(older_run, chain_server)
        newer_run = newer.sql(LOGS_QUERY).load("k", "logs", stream=True)
        run_until_caught_up(newer_run, chain_server)  # its producer fenced the older one
        chain_server.chain.mine(1)
        stopped = next(older_run)  # the older load's next transaction is refused
        assert not stopped.success and stopped.error is not None
        assert "took it over" in stopped.error
        assert "connection 'k', table 'logs', worker 0" in stopped.error
        assert "amp-k-logs-0" in stopped.error  # the transactional.id they share
        with pytest.raises(StreamOwnedError):
            next(older_run)
        run_until_caught_up(newer_run, chain_server)  # the newer one carries on
        newer_run.close()
