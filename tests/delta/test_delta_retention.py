"""The checkpoint survives Delta's log cleanup: every amp commit carries every current
checkpoint, so after a log checkpoint and ``cleanup_metadata()`` removed the older
commit files a restarted load resumes where it stopped. When cleanup removed every
commit that held it (only a foreign commit is left), the load refuses with an error
naming the fix instead of starting over silently."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from delta_support import TABLE, assert_exact, delta_config
from deltalake import DeltaTable, write_deltalake

from amp.client import Client
from amp.devserver import DevServer
from amp.errors import FatalLoadError
from kit import block_range, load_to_head, unique

SEED = 1
# Cleanup removes every commit file older than the log checkpoint (none is kept for time).
RETENTION = {"delta.logRetentionDuration": "interval 0 seconds"}


def _clean_log(location: str) -> int:
    """A log checkpoint at the latest version, then cleanup; returns the commit files left."""
    table = DeltaTable(location)
    table.create_checkpoint()
    table.cleanup_metadata()
    return len(list(Path(location, "_delta_log").glob("*.json")))


def test_a_restart_resumes_after_log_cleanup(tmp_path: Path) -> None:
    config = delta_config(tmp_path, checkpoint=True, configuration=RETENTION)
    connection = unique("dr")
    with DevServer(port=0, seed=SEED, initial_blocks=50, max_interval=10) as server:
        first = load_to_head(server, connection, "deltalake", config, TABLE)
        assert len(first.loads()) > 2
        assert _clean_log(f"{tmp_path}/{TABLE}") == 1, "cleanup should leave the last commit"
        head = server.chain.head
        server.chain.mine(5)
        again = load_to_head(server, connection, "deltalake", config, TABLE)
        assert block_range(again.loads()[0])["start"] == head + 1, "the load started over"
        assert_exact(tmp_path, server.chain)


def test_a_checkpoint_no_commit_holds_is_refused(tmp_path: Path) -> None:
    config = delta_config(tmp_path, checkpoint=True, configuration=RETENTION)
    connection = unique("dr")
    location = f"{tmp_path}/{TABLE}"
    with DevServer(port=0, seed=SEED, initial_blocks=30, max_interval=10) as server:
        load_to_head(server, connection, "deltalake", config, TABLE)
        # Someone else's commit (an external append) is all that cleanup leaves.
        schema = pa.schema(DeltaTable(location).schema().to_arrow())
        write_deltalake(location, schema.empty_table(), mode="append")
        assert _clean_log(location) == 1
        server.chain.mine(3)
        client = Client(server.url)
        try:
            client.configure_connection(connection, "deltalake", config)
            run = client.sql("SELECT * FROM eth_firehose.logs").load(connection, TABLE, stream=True)
            with pytest.raises(FatalLoadError) as raised:
                for result in run:
                    assert not result.success, f"loaded without its checkpoint: {result.metadata}"
            run.close()
        finally:
            client.close()
        message = str(raised.value)
        assert "no commit left in the log holds it" in message, message
        assert "another connection name" in message, message
