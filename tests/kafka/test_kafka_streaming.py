"""Streaming loads into Kafka across new blocks and reorgs: the table a consumer keeps from
the topic (upsert by key, tombstone deletes) must equal the canonical chain exactly."""

from __future__ import annotations

from amp.devserver import DevServer
from kafkakit import assert_topic_matches_chain, kafka_config, materialize, read_topic
from kit import LOGS_QUERY, Mine, Reorg, connected, drive


def test_stream_through_reorgs_of_depth_1(chain_server: DevServer, bootstrap: str) -> None:
    config = kafka_config(bootstrap)
    actions = [Mine(3), Reorg(1), Reorg(1, mine=2), Mine(1), Reorg(1)]
    with connected(chain_server, "k", "kafka", config) as client:
        run = client.sql(LOGS_QUERY).load("k", "logs", stream=True)
        driven = drive(run, chain_server.chain, actions)
    reorgs = driven.of("reorg")
    assert len(reorgs) == 3
    # rows_deleted is the number of retractions: one per row the replaced block held
    held = [actions[i].rows_replaced for i in (1, 2, 4)]
    assert [r.metadata["rows_deleted"] for r in reorgs] == held
    view = assert_topic_matches_chain(bootstrap, config["topic"], chain_server.chain)
    for record in view.values():
        assert record.headers["amp-network"] == b"mainnet"
        start, end = map(int, record.headers["amp-block-range"].split(b"-"))
        assert start <= int(record.headers["amp-block"]) <= end
        assert record.headers["amp-block-hash"].startswith(b"0x")
        assert record.headers["amp-writer"] == b"amp-k-logs-0"


def test_reorg_deeper_than_a_microbatch(chain_server: DevServer, bootstrap: str) -> None:
    """Microbatches of 10 blocks, a reorg of 25: the retractions span three of them."""
    config = kafka_config(bootstrap)
    with connected(chain_server, "k", "kafka", config) as client:
        run = client.sql(LOGS_QUERY).load("k", "logs", stream=True)
        change = Reorg(25, mine=3)
        driven = drive(run, chain_server.chain, [change])
    [reorg_result] = driven.of("reorg")
    invalidated = reorg_result.metadata["invalidated_range"]
    assert invalidated["start"] == chain_server.chain.head - 3 - 25 + 1
    assert reorg_result.metadata["rows_deleted"] == change.rows_replaced > 0
    records = read_topic(bootstrap, config["topic"])
    tombstones = [r for r in records if r.value is None]
    assert len(tombstones) == change.rows_replaced
    blocks = {int(r.headers["amp-block"]) for r in tombstones}
    old_head = invalidated["start"] + 25 - 1
    assert invalidated["start"] <= min(blocks) and max(blocks) <= old_head
    assert max(blocks) - min(blocks) >= 20, "the retractions should span three microbatches"
    assert_topic_matches_chain(bootstrap, config["topic"], chain_server.chain)


def test_arrow_values_keyed_by_a_column(chain_server: DevServer, bootstrap: str) -> None:
    """value_format='arrow' (one Arrow IPC stream per message) and key_column='hash': a
    reorged block's old key is retracted, its replacement has a new key."""
    config = kafka_config(bootstrap, value_format="arrow", key_column="hash")
    with connected(chain_server, "k", "kafka", config) as client:
        run = client.sql("SELECT * FROM eth_firehose.blocks").load("k", "blocks", stream=True)
        drive(run, chain_server.chain, [Reorg(2, mine=1), Reorg(12)])
    assert_topic_matches_chain(
        bootstrap,
        config["topic"],
        chain_server.chain,
        table="blocks",
        value_format="arrow",
        key=lambda row: ("0x" + row["hash"].hex()).encode(),
    )


def test_destination_table_name_is_the_topic(chain_server: DevServer, bootstrap: str) -> None:
    config = kafka_config(bootstrap)
    del config["topic"]
    table = f"logs_{config['state_topic'][-10:]}"
    with connected(chain_server, "k", "kafka", config) as client:
        run = client.sql(LOGS_QUERY).load("k", table, stream=True)
        drive(run, chain_server.chain)
    view = materialize(read_topic(bootstrap, table))
    assert len(view) == chain_server.chain.canonical_table("logs").num_rows
    assert all(key.startswith(f"{table}:mainnet:".encode()) for key in view)


def test_batch_load_twice_keeps_each_row_once(chain_server: DevServer, bootstrap: str) -> None:
    """A batch (non-streaming) load is one transaction; loading the same query again
    writes the same keys, so the kept table still has each row once."""
    config = kafka_config(bootstrap)
    with connected(chain_server, "k", "kafka", config) as client:
        for _ in range(2):
            results = list(client.sql(LOGS_QUERY).load("k", "logs"))
            assert results[-1].metadata["operation"] == "commit"
    assert_topic_matches_chain(bootstrap, config["topic"], chain_server.chain)


def test_the_guides_kafka_sample_config(chain_server: DevServer, bootstrap: str) -> None:
    """The resilience guide's "Kafka/Non-Transactional Destinations" config, as written
    (with this suite's broker and a topic of its own)."""
    topic = kafka_config(bootstrap)["topic"]
    config = {
        "bootstrap_servers": bootstrap,
        "topic": topic,
        "checkpoint": {"enabled": True},  # Resume capability
        "idempotency": {
            "enabled": True,  # Prevent duplicate events
            "mode": "tracking",  # Use processed ranges table
            "cleanup_days": 7,  # Kafka retains 7 days
        },
    }
    with connected(chain_server, "k", "kafka", config) as client:
        drive(client.sql(LOGS_QUERY).load("k", "logs", stream=True), chain_server.chain, [Reorg(2)])
    assert_topic_matches_chain(bootstrap, topic, chain_server.chain)
