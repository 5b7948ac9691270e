"""Kafka's one writer per stream: the producer's ``transactional.id`` fencing.

Why nothing is locked at start: a producer that starts with a stream's
``transactional.id`` fences every older producer with that id, and the broker refuses
their transactions from then on. So for Kafka the NEWER load of a stream wins and the
older one stops. This module turns the older one's fenced error into a clear
StreamOwnedError (never retried: a fenced producer can never write again).
"""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException

from amp.errors import StreamOwnedError
from amp.loaders.ownership import Stream

_FENCED_CODES = frozenset(
    {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}
)


def is_fenced(exc: BaseException) -> bool:
    """Whether ``exc`` says a newer producer with our ``transactional.id`` took over."""
    error = exc.args[0] if isinstance(exc, KafkaException) and exc.args else exc
    return isinstance(error, KafkaError) and error.code() in _FENCED_CODES


def taken_over(stream: Stream, destination: str, transactional_id: str) -> StreamOwnedError:
    return StreamOwnedError(
        f"FATAL: another load of the stream {stream.describe()} into {destination} took it "
        f"over: a newer producer started with the same transactional.id "
        f"{transactional_id!r}, which fences this one (for Kafka the newer load of a stream "
        "wins and the older stops). Two loads of one stream would write its rows twice, so "
        "this one stops. Run one load per connection, table and worker; to run both, give "
        "this one another connection name, table or worker id.",
        f"a newer producer with transactional.id {transactional_id!r}",
    )
