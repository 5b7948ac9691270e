"""``amp checkpoints list|reset`` on Kafka after a real streaming load with checkpoints
and idempotency (the cycle: ``kit.checkpoints_cli.run_cycle``). The load keeps its state
in the default state topic, the one a ``kafka://`` URL names."""

from __future__ import annotations

import pytest

from amp.devserver import DevServer
from kafkakit import assert_topic_matches_chain
from kit.checkpoints_cli import run_cycle
from kit.services import unique

pytestmark = pytest.mark.timeout(240)


def test_list_and_reset_checkpoints(bootstrap: str, capsys: pytest.CaptureFixture[str]) -> None:
    topic, table = unique("t"), unique("ckpt")
    config = {"bootstrap_servers": bootstrap, "topic": topic}
    with DevServer(port=0, seed=5, initial_blocks=60, max_interval=10) as server:
        run_cycle(
            capsys,
            server,
            "kafka",
            config,
            f"kafka://{bootstrap}/{topic}",
            table,
            unique("conn"),
            lambda: assert_topic_matches_chain(bootstrap, topic, server.chain),
        )
