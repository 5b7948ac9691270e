"""Kafka loader settings: the config keys, their validation at configure time, and the
librdkafka configuration of the producer, admin client and consumers built from them."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from amp.config import number_at_least, number_at_most, typed
from amp.deadpeer import DEAD_PEER_TIMEOUT_KEY, dead_peer_timeout
from amp.errors import ConfigError, DestinationError, StreamOwnedError
from amp.loaders.base import DataLoader
from amp.redact import redact_text

_FORMATS = ("json", "arrow")
_COMPRESSIONS = ("none", "gzip", "snappy", "lz4", "zstd")
_ACKS_ALL = ("all", "-1", -1)
_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
# Set by the loader; producer_config may not change them (exactly-once depends on them).
_RESERVED = frozenset(
    {"bootstrap.servers", "transactional.id", "enable.idempotence", "isolation.level"}
)
# producer_config keys that also apply to the admin client and consumers (security,
# networking); producer-only keys would only draw librdkafka warnings there.
_SHARED_PREFIXES = (
    "security.",
    "sasl.",
    "ssl.",
    "socket.",
    "broker.",
    "client.",
    "connections.",
    "reconnect.",
    "metadata.",
    "api.version",
    "enable.ssl",
    "enable.sasl",
    "topic.metadata",
    "debug",
    "log_level",
)
_SECRET_WORDS = ("password", "secret", "token", "jaas", "key")
_DEFAULT_STATE_TOPIC = "amp_state"
_DEFAULT_WINDOW = 100_000


def _check_topic_name(where: str, key: str, name: str) -> None:
    if not _TOPIC_NAME.match(name) or name in (".", ".."):
        raise ConfigError(
            f"{where}[{key!r}] = {name!r} is not a valid Kafka topic name: use 1-249 "
            "characters among letters, digits, '.', '_' and '-'"
        )


_SERVER_PORT = re.compile(r"^(?:\w+://)?(?:\[[^\]]*\]|[^:\[\]]*):(?P<port>[^:]*)$")


def _check_bootstrap_ports(where: str, servers: str) -> None:
    """Each ``host:port`` of ``bootstrap_servers`` with a port of 1..65535 (librdkafka
    would only retry an impossible port forever)."""
    for server in servers.split(","):
        found = _SERVER_PORT.match(server.strip())
        if found is None:
            continue  # no port given (or a bare IPv6 address): librdkafka's default
        port = found.group("port")
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ConfigError(
                f"{where}['bootstrap_servers'] has {server.strip()!r}: its port must be a "
                "number from 1 to 65535"
            )


class KafkaSettings(DataLoader[dict[str, Any]]):
    """The validated settings of a Kafka connection and the client configs they make."""

    loader_type = "kafka"
    config_keys = frozenset(
        {
            "bootstrap_servers",
            "topic",
            "compression",
            "acks",
            "client_id",
            "value_format",
            "key_column",
            "state_topic",
            "producer_config",
            "partitions",
            "replication_factor",
            "timeout",
            "retraction_window_blocks",
            DEAD_PEER_TIMEOUT_KEY,
        }
    )

    def __init__(self, config: Mapping[str, Any], connection_name: str = "") -> None:
        super().__init__(config, connection_name)
        where = "kafka config"
        if "bootstrap_servers" not in self.config:
            raise ConfigError(f"{where} needs 'bootstrap_servers', e.g. 'kafka1:9092,kafka2:9092'")
        servers = typed(where, "bootstrap_servers", self.config["bootstrap_servers"], str)
        if not servers.strip():
            raise ConfigError(f"{where}['bootstrap_servers'] is empty; e.g. 'localhost:9092'")
        self.bootstrap_servers = servers.strip()
        _check_bootstrap_ports(where, self.bootstrap_servers)
        for key in ("topic", "client_id", "key_column", "state_topic"):
            if key in self.config:
                typed(where, key, self.config[key], str)
        self.topic: str | None = self.config.get("topic")
        if self.topic is not None:
            _check_topic_name(where, "topic", self.topic)
        self.state_topic: str = self.config.get("state_topic", _DEFAULT_STATE_TOPIC)
        _check_topic_name(where, "state_topic", self.state_topic)
        if self.topic is not None and self.topic == self.state_topic:
            raise ConfigError(f"{where}: 'topic' and 'state_topic' must differ")
        self.value_format = self.config.get("value_format", "json")
        if self.value_format not in _FORMATS:
            raise ConfigError(
                f"{where}['value_format'] must be one of {', '.join(_FORMATS)}, "
                f"got {self.value_format!r}"
            )
        self.compression = self.config.get("compression", "none")
        if self.compression not in _COMPRESSIONS:
            raise ConfigError(
                f"{where}['compression'] must be one of {', '.join(_COMPRESSIONS)}, "
                f"got {self.compression!r}"
            )
        acks = self.config.get("acks", "all")
        if isinstance(acks, bool) or acks not in _ACKS_ALL:
            raise ConfigError(
                f"{where}['acks'] must be 'all' (or -1), got {acks!r}: exactly-once delivery "
                "uses an idempotent, transactional producer, which Kafka only allows with "
                "acks=all"
            )
        self.key_column: str | None = self.config.get("key_column")
        partitions = self.config.get("partitions", 1)
        typed(where, "partitions", partitions, int)
        self.partitions: int = number_at_least(where, "partitions", partitions, 1)
        replication = self.config.get("replication_factor", -1)
        typed(where, "replication_factor", replication, int)
        if replication < 1 and replication != -1:
            raise ConfigError(
                f"{where}['replication_factor'] must be >= 1 (or -1 for the broker's "
                f"default), got {replication!r}"
            )
        self.replication_factor: int = replication
        self.timeout = float(number_at_least(where, "timeout", self.config.get("timeout", 10), 0.1))
        number_at_most(where, "timeout", self.timeout, 86_400, "one day, in seconds")
        window = self.config.get("retraction_window_blocks", _DEFAULT_WINDOW)
        typed(where, "retraction_window_blocks", window, int)
        number_at_least(where, "retraction_window_blocks", window, 1)
        self.window: int = window
        extra = self.config.get("producer_config", {})
        if not isinstance(extra, Mapping):
            raise ConfigError(
                f"{where}['producer_config'] must be a dict of librdkafka settings, "
                f"got {type(extra).__name__}"
            )
        for key, value in extra.items():
            if not isinstance(key, str):
                raise ConfigError(f"{where}['producer_config'] keys must be strings: {key!r}")
            if key in _RESERVED:
                raise ConfigError(
                    f"{where}['producer_config'] may not set {key!r}: amp sets it "
                    + (
                        "(use 'bootstrap_servers')"
                        if key == "bootstrap.servers"
                        else "for exactly-once delivery"
                    )
                )
            if not isinstance(value, str | int | float | bool):
                raise ConfigError(
                    f"{where}['producer_config'][{key!r}] must be a string, number or bool"
                )
        for own, librdkafka in (
            ("compression", "compression.type"),
            ("acks", "acks"),
            ("client_id", "client.id"),
            (DEAD_PEER_TIMEOUT_KEY, "socket.timeout.ms"),
        ):
            if own in self.config and librdkafka in extra:
                raise ConfigError(
                    f"{where}: set {librdkafka!r} either as {own!r} or in producer_config, not both"
                )
        self.producer_config: dict[str, Any] = dict(extra)
        self.dead_peer_timeout = dead_peer_timeout(where, self.config)
        self._check_client_settings()
        self._workers: dict[str, int] = {}  # table → the worker id its load claimed

    # -- description and configuration ---------------------------------------------------

    def describe(self) -> str:
        return f"kafka://{redact_text(self.bootstrap_servers)}/{self.topic or '<table>'}"

    def describe_table(self, table: str) -> str:
        return f"topic {self.topic or table}"

    def _redact(self, text: str) -> str:
        """``text`` with the values of secret-looking producer_config keys hidden."""
        for key, value in self.producer_config.items():
            if any(word in key.lower() for word in _SECRET_WORDS) and str(value):
                text = text.replace(str(value), "***")
        return text

    def _client_config(self, producer: bool) -> dict[str, Any]:
        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "client.id": self.config.get("client_id", f"amp-{self.connection_name or 'kafka'}"),
            "logger": logging.getLogger("amp.loaders.kafka.librdkafka"),
            # A broker gone silent (dead NAT, failed-over host): TCP keepalive finds an
            # idle dead connection, and a request unanswered for dead_peer_timeout tears
            # the connection down (librdkafka then reconnects; a blocked flush or commit
            # ends at 'timeout' as a transient error). producer_config may set either.
            "socket.keepalive.enable": True,
            "socket.timeout.ms": max(1, round(self.dead_peer_timeout * 1000)),
        }
        if producer:
            config.update(
                {
                    "acks": "all",
                    "compression.type": self.compression,
                    "linger.ms": 5,
                    "queue.buffering.max.messages": 1_000_000,
                    "partitioner": "murmur2_random",
                }
            )
            config.update(self.producer_config)
        else:
            config.update(
                {k: v for k, v in self.producer_config.items() if k.startswith(_SHARED_PREFIXES)}
            )
        return config

    def _check_client_settings(self) -> None:
        """Let librdkafka judge the settings now (no broker is contacted), so a bad
        producer_config fails at configure_connection, not mid-load."""
        config = self._client_config(producer=True)
        config["transactional.id"] = "amp-settings-check"
        try:
            Producer(config)
        except (KafkaException, ValueError, TypeError) as exc:
            hint = ""
            if DEAD_PEER_TIMEOUT_KEY in self.config and "socket.timeout.ms" in str(exc):
                hint = f" ({DEAD_PEER_TIMEOUT_KEY} sets socket.timeout.ms)"
            raise ConfigError(
                self._redact(f"invalid Kafka producer settings: {exc}{hint}")
            ) from exc

    def _failure(self, what: str, exc: BaseException) -> DestinationError | StreamOwnedError:
        """A DestinationError for ``what`` caused by ``exc`` (which the classifier reads:
        retriable Kafka errors are transient, authorization errors permanent)."""
        if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
            error: KafkaError = exc.args[0]
            name = error.name()
            hint = ""
            if "AUTHORIZATION" in name:
                hint = "; the principal lacks an ACL for this: grant it or change the config"
            elif name in ("_TRANSPORT", "_ALL_BROKERS_DOWN", "_TIMED_OUT", "_RESOLVE"):
                hint = "; check bootstrap_servers and that the brokers are running"
            failure = DestinationError(
                self._redact(
                    f"Kafka at {self.bootstrap_servers}: {what} failed: {error.str()} "
                    f"({name}){hint}"
                )
            )
        else:
            failure = DestinationError(
                self._redact(f"Kafka at {self.bootstrap_servers}: {what} failed: {exc}")
            )
        failure.__cause__ = exc
        return failure

    def _transactional_id(self, table: str) -> str:
        """``amp-{connection}-{table}-{worker}``: one producer per stream, so the workers
        of a parallel load never fence each other, and a restarted worker fences its
        own crashed predecessor."""
        return f"amp-{self.connection_name}-{table}-{self._workers.get(table, 0)}"

    def topic_for(self, table: str) -> str:
        """The topic rows of ``table`` go to: ``topic`` when set, else the table name."""
        topic = self.topic or table
        _check_topic_name("kafka destination", "topic", topic)
        return topic
