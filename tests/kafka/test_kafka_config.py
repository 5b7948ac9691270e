"""Bad input gets clear errors: configuration, modes Kafka cannot do, unreachable or
failing brokers (classified for the retry policy), and secrets never shown."""

from __future__ import annotations

import time
from typing import Any

import pyarrow as pa
import pytest
from confluent_kafka import KafkaError, KafkaException

from amp.client import Client
from amp.devserver import DevServer
from amp.errors import ConfigError, DestinationError
from amp.loaders.base import LoadMode
from amp.loaders.kafka import KafkaLoader
from amp.streaming.classify import ErrorClassifier
from amp.streaming.types import BlockRange
from kafkakit import kafka_config, loader_config, start_tansu
from kit import free_port

SERVERS = {"bootstrap_servers": "127.0.0.1:9"}


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({}, "needs 'bootstrap_servers'"),
        ({"bootstrap_servers": ""}, "'bootstrap_servers'.* is empty"),
        ({"bootstrap_servers": 9092}, "'bootstrap_servers'.* must be str"),
        ({**SERVERS, "topik": "x"}, "unknown key 'topik'.*did you mean 'topic'"),
        ({**SERVERS, "value_format": "avro"}, "'value_format'.* must be one of json, arrow"),
        ({**SERVERS, "compression": "brotli"}, "'compression'.* must be one of"),
        ({**SERVERS, "acks": 1}, "acks=all"),
        ({**SERVERS, "topic": "no spaces!"}, "not a valid Kafka topic name"),
        ({**SERVERS, "topic": "same", "state_topic": "same"}, "must differ"),
        ({**SERVERS, "partitions": 0}, "'partitions'.* must be >= 1"),
        ({**SERVERS, "partitions": "2"}, "'partitions'.* must be int"),
        ({**SERVERS, "timeout": 0}, "'timeout'.* must be >= 0.1"),
        ({**SERVERS, "producer_config": "acks=all"}, "must be a dict of librdkafka settings"),
        (
            {**SERVERS, "producer_config": {"transactional.id": "mine"}},
            "may not set 'transactional.id'",
        ),
        ({**SERVERS, "producer_config": {"linger.ms": [5]}}, "must be a string, number"),
        (
            {**SERVERS, "compression": "lz4", "producer_config": {"compression.type": "gzip"}},
            "either as 'compression' or in producer_config",
        ),
    ],
)
def test_bad_config_is_rejected_with_a_clear_message(config: dict[str, Any], message: str) -> None:
    client = Client("grpc://127.0.0.1:1")
    with pytest.raises(ConfigError, match=message):
        client.configure_connection("k", "kafka", config)


def test_overwrite_is_refused(amp_devserver: DevServer, bootstrap: str) -> None:
    client = Client(amp_devserver.url)
    client.configure_connection("k", "kafka", kafka_config(bootstrap))
    try:
        # Refused when load() is called, before the load could clear its own state.
        with pytest.raises(ConfigError, match="mode='overwrite' is not possible"):
            client.sql("SELECT * FROM eth_firehose.logs").load(
                "k", "logs", stream=True, mode="overwrite"
            )
    finally:
        client.close()


def test_missing_key_column_is_named(bootstrap: str) -> None:
    loader = KafkaLoader(loader_config(bootstrap, key_column="hash"), "k")
    loader.connect()
    schema = pa.schema([("block_num", pa.uint64()), ("data", pa.binary())])
    with pytest.raises(ConfigError, match="no such column; columns: block_num, data"):
        loader.prepare_table("logs", schema, LoadMode.APPEND, "block_num")


def test_unreachable_broker_fails_fast_naming_it_and_is_transient() -> None:
    servers = f"127.0.0.1:{free_port()}"
    loader = KafkaLoader({"bootstrap_servers": servers, "timeout": 1}, "k")
    started = time.monotonic()
    with pytest.raises(DestinationError, match=f"Kafka at {servers}") as failure:
        loader.connect()
    assert time.monotonic() - started < 5
    assert "check bootstrap_servers" in str(failure.value)
    assert ErrorClassifier.is_transient(failure.value)


def test_secrets_are_never_shown() -> None:
    secret = "hunter2-very-secret"
    config = {
        "bootstrap_servers": f"127.0.0.1:{free_port()}",
        "timeout": 1,
        "producer_config": {
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "PLAIN",
            "sasl.username": "amp",
            "sasl.password": secret,
            "partitioner": secret,  # an invalid value, which librdkafka echoes
        },
    }
    client = Client("grpc://127.0.0.1:1")
    with pytest.raises(ConfigError) as failure:  # librdkafka checks settings at once
        client.configure_connection("k", "kafka", config)
    assert "partitioner" in str(failure.value)
    assert secret not in str(failure.value) and "***" in str(failure.value)
    del config["producer_config"]["partitioner"]  # type: ignore[attr-defined]
    loader = KafkaLoader(config, "k")
    assert secret not in repr(loader) and secret not in loader.describe()
    with pytest.raises(DestinationError) as unreachable:
        loader.connect()
    assert secret not in str(unreachable.value)


def test_authorization_failures_are_permanent_with_a_hint() -> None:
    loader = KafkaLoader(SERVERS, "k")
    denied = KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))
    error = loader._failure("producing to 'logs'", denied)
    error.__cause__ = denied
    assert "TOPIC_AUTHORIZATION_FAILED" in str(error) and "ACL" in str(error)
    assert not ErrorClassifier.is_transient(error)


def test_a_broker_that_dies_mid_transaction_is_a_transient_failure(tmp_path: Any) -> None:
    broker = start_tansu(tmp_path)
    try:
        loader = KafkaLoader(loader_config(broker.bootstrap, timeout=1), "k")
        loader.connect()
        batch = pa.record_batch({"block_num": pa.array([1, 1], pa.uint64())})
        loader.prepare_table("logs", batch.schema, LoadMode.APPEND, "block_num")
        loader.begin()
        loader.write("logs", batch, BlockRange("mainnet", 1, 1, hash="0x01"))
        broker.stop()
        with pytest.raises(DestinationError, match="committing a transaction failed") as failure:
            loader.commit()
        assert ErrorClassifier.is_transient(failure.value)
        loader.rollback()  # nothing open any more: must not raise
    finally:
        broker.stop()
