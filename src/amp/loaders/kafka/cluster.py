"""The Kafka cluster as the loader sees it: the admin client, topics, their partitions
and end offsets, and reading a topic's messages to its end."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping

from confluent_kafka import (
    Consumer,
    IsolationLevel,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec

from amp.errors import ConfigError
from amp.loaders.kafka.config import KafkaSettings

log = logging.getLogger("amp.loaders.kafka")

# Longest wait for another writer's open transaction on the state topic (its producer
# may have died: the broker aborts it after transaction.timeout.ms, 60 s by default).
_STATE_READ_SECONDS = 90.0


class KafkaCluster(KafkaSettings):
    """Admin operations and topic reads (the loader's connection to the cluster)."""

    _admin: AdminClient | None

    # -- connection ----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._admin is not None

    def connect(self) -> None:
        """Reach the cluster (within ``timeout``) and make sure the state topic exists."""
        if self._admin is not None:
            return
        try:
            admin = AdminClient(self._client_config(producer=False))
        except KafkaException as exc:
            raise ConfigError(self._redact(f"invalid Kafka client settings: {exc}")) from exc
        try:
            metadata = admin.list_topics(timeout=self.timeout)
        except KafkaException as exc:
            raise self._failure(f"reaching the cluster within {self.timeout:g} s", exc) from exc
        self._admin = admin
        if self.state_topic not in metadata.topics:
            self._create_topic(self.state_topic, 1, {"cleanup.policy": "compact"})

    @property
    def admin(self) -> AdminClient:
        if self._admin is None:
            self.connect()
        assert self._admin is not None
        return self._admin

    def _create_topic(self, topic: str, partitions: int, config: dict[str, str]) -> None:
        new = NewTopic(
            topic,
            num_partitions=partitions,
            replication_factor=self.replication_factor,
            config=config,
        )
        future = self.admin.create_topics([new], request_timeout=self.timeout)[topic]
        try:
            future.result(timeout=self.timeout)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                return
            raise self._failure(f"creating topic {topic!r}", exc) from exc
        log.info("Created Kafka topic %s (%d partitions)", topic, partitions)

    def _partitions(self, topic: str) -> list[int] | None:
        """The partitions of ``topic``, or None when it does not exist (never creates it:
        asking the metadata of one missing topic may auto-create it)."""
        try:
            metadata = self.admin.list_topics(timeout=self.timeout)
        except KafkaException as exc:
            raise self._failure("reading cluster metadata", exc) from exc
        found = metadata.topics.get(topic)
        if found is None:
            return None
        if found.error is not None:
            raise self._failure(f"reading metadata of topic {topic!r}", KafkaException(found.error))
        return sorted(found.partitions)

    def _high_watermarks(
        self, topic: str, partitions: Iterable[int], committed: bool = False
    ) -> dict[int, int]:
        """Each partition's end offset, counting uncommitted messages; with ``committed``
        its last stable offset (where the first transaction still open begins)."""
        request = {TopicPartition(topic, p): OffsetSpec.latest() for p in partitions}
        if not request:
            return {}
        isolation = IsolationLevel.READ_COMMITTED if committed else IsolationLevel.READ_UNCOMMITTED
        futures = self.admin.list_offsets(
            request, isolation_level=isolation, request_timeout=self.timeout
        )
        try:
            return {tp.partition: f.result().offset for tp, f in futures.items()}
        except KafkaException as exc:
            raise self._failure(f"reading the end offsets of topic {topic!r}", exc) from exc

    def _consumer(self, committed_only: bool) -> Consumer:
        config = self._client_config(producer=False)
        config.update(
            {
                "group.id": f"amp-reader-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "isolation.level": "read_committed" if committed_only else "read_uncommitted",
                "auto.offset.reset": "earliest",
            }
        )
        return Consumer(config)

    def _read(
        self, topic: str, start: Mapping[int, int], committed_only: bool, seconds: float
    ) -> Iterator[Message]:
        """Messages of ``topic`` from ``start`` (partition → offset) to the end offsets
        taken now; with ``committed_only``, those of committed transactions (waiting
        while another writer's transaction is open)."""
        ends = self._high_watermarks(topic, start)
        pending = {p for p, end in ends.items() if end > start[p]}
        if not pending:
            return
        consumer = self._consumer(committed_only)
        deadline = time.monotonic() + seconds
        try:
            consumer.assign([TopicPartition(topic, p, start[p]) for p in sorted(pending)])
            while pending:
                if time.monotonic() > deadline:
                    raise self._failure(
                        f"reading topic {topic!r} to its end",
                        KafkaException(
                            KafkaError(
                                KafkaError._TIMED_OUT,
                                f"not at the end after {seconds:g} s (an open transaction "
                                "of another producer?)",
                                retriable=True,
                            )
                        ),
                    )
                for message in consumer.consume(num_messages=10_000, timeout=0.2):
                    error = message.error()
                    if error is None:
                        # A fetched message has both (they are None only on some errors).
                        partition, offset = message.partition(), message.offset()
                        assert partition is not None and offset is not None
                        if offset >= ends[partition]:
                            continue
                        yield message
                    elif error.code() != KafkaError._PARTITION_EOF:
                        raise self._failure(f"reading topic {topic!r}", KafkaException(error))
                for position in consumer.position(
                    [TopicPartition(topic, p) for p in sorted(pending)]
                ):
                    if position.offset >= ends[position.partition]:
                        pending.discard(position.partition)
        finally:
            consumer.close()

    def _open_writers(self, topic: str) -> set[str]:
        """The ``amp-writer`` headers of ``topic``'s messages past its last stable offset:
        the writers whose transaction is open there. (A broker that reports a lower last
        stable offset than the true one, as tansu does, makes this read more, never miss.)"""
        partitions = self._partitions(topic)
        if not partitions:
            return set()
        stable = self._high_watermarks(topic, partitions, committed=True)
        writers: set[str] = set()
        for message in self._read(topic, stable, False, _STATE_READ_SECONDS):
            writer = dict(message.headers() or []).get("amp-writer")
            if isinstance(writer, bytes):
                writers.add(writer.decode(errors="replace"))
        return writers
