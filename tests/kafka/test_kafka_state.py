"""The Kafka state store: every StateStore method against a real broker; staged writes
reach the mirror only on commit; a new loader rebuilds the same state from the topic."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from amp.loaders.kafka import KafkaLoader
from amp.streaming.state_documents import DocumentStateStore
from amp.streaming.types import BlockRange
from kafkakit import kafka_config, read_topic

CONN = "state"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _loader(config: dict[str, object]) -> KafkaLoader:
    loader = KafkaLoader(
        {k: v for k, v in config.items() if k != "resilience"}, connection_name=CONN
    )
    loader.connect()
    return loader


@pytest.fixture
def config(bootstrap: str) -> dict[str, object]:
    return kafka_config(bootstrap)


@pytest.fixture
def loader(config: dict[str, object]) -> Iterator[KafkaLoader]:
    loader = _loader(config)
    try:
        yield loader
    finally:
        loader.close()


def test_checkpoints_staged_until_commit_and_archived(
    loader: KafkaLoader, config: dict[str, object], bootstrap: str
) -> None:
    store = loader.state_store("amp_")
    assert store.load_checkpoint(CONN, "t", 0) is None
    store.save_checkpoint(CONN, "t", 0, {"n": 1}, T0)  # no transaction: its own
    assert store.load_checkpoint(CONN, "t", 0) == {"n": 1}

    loader.begin()
    store.save_checkpoint(CONN, "t", 0, {"n": 2}, T0)
    assert store.load_checkpoint(CONN, "t", 0) == {"n": 2}  # read your writes
    loader.rollback()
    assert store.load_checkpoint(CONN, "t", 0) == {"n": 1}  # discarded

    loader.begin()
    store.save_checkpoint(CONN, "t", 0, {"n": 3}, T0 + timedelta(1), archive_previous=True)
    store.save_checkpoint(CONN, "t", 1, {"n": 30}, T0)
    loader.commit()
    assert store.load_checkpoint(CONN, "t", 0) == {"n": 3}
    state = read_topic(bootstrap, str(config["state_topic"]))
    history = [r for r in state if b'"checkpoint_history"' in (r.key or b"")]
    assert len(history) == 1 and b'{"n": 1}' in (history[0].value or b"")

    loader.close()  # its successor fences it (same transactional.id)
    heir = _loader(config)
    again = heir.state_store("amp_")  # rebuilt from the topic
    assert again.load_checkpoint(CONN, "t", 0) == {"n": 3}
    assert again.load_checkpoint(CONN, "t", 1) == {"n": 30}
    assert heir.state_store("other_").load_checkpoint(CONN, "t", 0) is None

    store = again
    assert store.delete_checkpoint(CONN, "t", 1) == 1
    assert store.load_checkpoint(CONN, "t", 1) is None
    assert store.delete_checkpoint(CONN, "t") == 1
    assert store.load_checkpoint(CONN, "t", 0) is None
    heir.close()
    assert _loader(config).state_store("amp_").load_checkpoint(CONN, "t", 0) is None


def _mark(
    store: DocumentStateStore, start: int, end: int, when: datetime, net: str = "eth"
) -> None:
    block_range = BlockRange(net, start, end, hash=f"0x{end:04x}")
    store.mark_processed(CONN, "t", block_range, when, "digest")


def test_processed_ranges(loader: KafkaLoader, config: dict[str, object]) -> None:
    store = loader.state_store("amp_")
    now = datetime.now(UTC)
    loader.begin()
    _mark(store, 0, 9, now - timedelta(days=40))
    _mark(store, 10, 19, now)
    _mark(store, 20, 29, now)
    _mark(store, 0, 50, now, net="other")
    loader.commit()

    found = store.overlapping_ranges(CONN, "t", BlockRange("eth", 5, 12))
    assert sorted((r.start, r.end, r.end_hash) for r in found) == [
        (0, 9, "0x0009"),
        (10, 19, "0x0013"),
    ]
    assert found[0].batch_hash == "digest"
    assert store.overlapping_ranges(CONN, "t", BlockRange("eth", 30, 40)) == []

    assert store.forget_ranges_from(CONN, "t", "eth", 15) == 2
    assert store.cleanup_old_ranges(CONN, "t", days=30) == 1
    loader.close()  # its successor fences it (same transactional.id)
    heir = _loader(config)
    store = heir.state_store("amp_")  # rebuilt from the topic
    assert store.overlapping_ranges(CONN, "t", BlockRange("eth", 0, 100)) == []
    assert len(store.overlapping_ranges(CONN, "t", BlockRange("other", 0, 100))) == 1
    assert store.forget_ranges(CONN, "t") == 1
    assert store.overlapping_ranges(CONN, "t", BlockRange("other", 0, 100)) == []
    store.create_checkpoint_tables()  # no-ops: the state topic exists since connect()
    store.create_processed_ranges_table()
    heir.close()


def test_state_topic_is_compacted(loader: KafkaLoader, bootstrap: str) -> None:
    resource = ConfigResource(ConfigResource.Type.TOPIC, loader.state_topic)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    entries = admin.describe_configs([resource])[resource].result(10)
    assert entries["cleanup.policy"].value == "compact"
