"""Kafka loader (see ``amp.loaders.kafka.loader`` for how it delivers exactly once)."""

from amp.loaders.kafka.loader import KafkaLoader
from amp.loaders.kafka.values import arrow_values, json_values

__all__ = ["KafkaLoader", "arrow_values", "json_values"]
