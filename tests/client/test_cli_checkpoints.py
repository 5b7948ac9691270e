"""``amp checkpoints list|reset`` on PostgreSQL and DuckDB after a real streaming load
with checkpoints and idempotency (the cycle: ``kit.checkpoints_cli.run_cycle``)."""

from __future__ import annotations

import pytest
from oracle import Destination

from amp.devserver import DevServer
from kit import PG_HOST, PG_PORT, assert_table_equals_chain
from kit.checkpoints_cli import run_cycle
from kit.services import PG_DATABASE, PG_USER, unique

pytestmark = pytest.mark.timeout(180)


def test_list_and_reset_checkpoints(
    destination: Destination, capsys: pytest.CaptureFixture[str]
) -> None:
    table = destination.new_table("ckpt")
    if destination.kind == "postgresql":
        url = f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{PG_DATABASE}"
    else:
        url = f"duckdb:///{destination.duckdb_path}"
    with DevServer(port=0, seed=5, initial_blocks=60, max_interval=10) as server:
        run_cycle(
            capsys,
            server,
            destination.kind,
            destination.config,
            url,
            table,
            unique("conn"),
            lambda: assert_table_equals_chain(destination, table, server.chain),
        )
