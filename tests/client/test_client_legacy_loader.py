"""A loader written for the older client's extension API runs unchanged: a
``DataLoader[Config]`` subclass with only ``connect``, ``disconnect`` and
``_load_batch_impl`` (here: one that posts each batch as JSON lines to an HTTP
service, a real one on 127.0.0.1). It gets the destination edge's retries and circuit
breaker, and exactly the limits docs/loaders.md gives it: a failed call retried alone,
a reorg it cannot delete stops the load, or with ``keeps_forked_rows`` is kept."""

from __future__ import annotations

import json
import logging
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pytest
from oracle import LogKey, assert_log_keys_equal, canonical_log_keys, json_log_key
from rowstore import RowStore
from streamdriver import checked

from amp.client import Client, LoadResult, LoadRun
from amp.devserver import DevServer
from amp.devserver.chain import SimulatedChain
from amp.errors import ConfigError, FatalLoadError
from amp.loaders import LOADERS, register_loader
from amp.loaders.base import DataLoader
from amp.streaming.resilience import Classification, ErrorClassifier, ErrorKind
from kit import Mine, caught_up, drive

pytestmark = pytest.mark.timeout(60)

QUERY = "SELECT * FROM eth_firehose.logs"
FAST_RETRIES = {"initial_backoff_ms": 5, "max_backoff_ms": 50, "jitter": False}


# -- the loader, as a user of the older client wrote it ----------------------------------


@dataclass
class WebhookConfig:
    url: str
    timeout: float = 10.0


def _plain(value: object) -> str:
    return value.hex() if isinstance(value, bytes) else str(value)


class WebhookLoader(DataLoader[WebhookConfig]):
    """Posts each batch to ``<url>/<table>`` as newline-delimited JSON."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.opener: urllib.request.OpenerDirector | None = None

    def connect(self) -> None:
        self.opener = urllib.request.build_opener()

    def disconnect(self) -> None:
        self.opener = None

    def _load_batch_impl(self, batch: pa.RecordBatch, table_name: str, **kwargs: Any) -> int:
        assert self.opener is not None, "_load_batch_impl before connect()"
        body = "".join(json.dumps(row, default=_plain) + "\n" for row in batch.to_pylist())
        request = urllib.request.Request(
            f"{self.config.url}/{table_name}", data=body.encode(), method="POST"
        )
        with self.opener.open(request, timeout=self.config.timeout) as response:
            response.read()
        return batch.num_rows


class ConflictIsTransient(ErrorClassifier):
    """A service that answers 409 while busy: worth retrying (amp's rule says permanent)."""

    @classmethod
    def classify(cls, failure: BaseException | str) -> Classification:
        if getattr(failure, "status", None) == 409:
            return Classification(ErrorKind.TRANSIENT, "busy")
        return super().classify(failure)


class PatientWebhookLoader(WebhookLoader):
    error_classifier = ConflictIsTransient


class EventLogLoader(WebhookLoader):
    """Its readers handle reorgs themselves: the rows of replaced blocks may stay."""

    keeps_forked_rows = True


# -- fixtures and helpers -----------------------------------------------------------------


@pytest.fixture(autouse=True)
def registered() -> Iterator[None]:
    names = {"webhook": WebhookLoader, "webhook-patient": PatientWebhookLoader}
    names["webhook-log"] = EventLogLoader
    for name, cls in names.items():
        register_loader(name, cls)
    yield
    for name in names:
        LOADERS.pop(name, None)


@pytest.fixture
def store() -> Iterator[RowStore]:
    with RowStore() as running:
        yield running


@pytest.fixture
def srv() -> Iterator[DevServer]:
    """40 blocks in microbatches of 10, 16 rows a message: many posts per microbatch."""
    with DevServer(port=0, seed=5, initial_blocks=40, max_interval=10, rows_per_message=16) as s:
        yield s


def hook_client(srv: DevServer, store: RowStore, loader: str = "webhook", **config: Any) -> Client:
    client = Client(srv.url)
    client.configure_connection("hook", loader, {"url": store.url, **config})
    return client


def stored(store: RowStore) -> list[LogKey]:
    with store.lock:
        return [json_log_key(row) for row in store.rows["logs"]]


def messages(caplog: pytest.LogCaptureFixture, words: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if words in r.getMessage()]


def run_until_fatal(run: LoadRun, chain: SimulatedChain, change: Any = None) -> FatalLoadError:
    """Iterate ``run`` (applying ``change`` once it has caught up) until it stops with a
    FatalLoadError, after a failed LoadResult with the same message."""
    results: list[LoadResult] = []
    with pytest.raises(FatalLoadError) as raised:
        try:
            for result in run:
                results.append(result)
                if change is not None and caught_up(result, chain):
                    change(chain)
                    change = None
        finally:
            run.close()
    assert results and not results[-1].success and results[-1].error == str(raised.value)
    return raised.value


@pytest.fixture(autouse=True)
def info_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="amp")


# -- the tests ------------------------------------------------------------------------------


def test_it_streams_unchanged_and_a_transient_error_is_retried_alone(
    srv: DevServer, store: RowStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.refuse([503, 503], after=2)  # the third and fourth posts fail
    client = hook_client(srv, store, resilience={"retry": FAST_RETRIES})
    try:
        loader = client._get_loader("hook")
        assert isinstance(loader.config, WebhookConfig) and loader.config.url == store.url
        assert loader.connection_name == "hook"  # its own __init__(self, config) kept
        drive(
            client.sql(QUERY).load("hook", "logs", stream=True),
            srv.chain,
            (),
            checked(srv.chain, "logs"),
        )
    finally:
        client.close()
    assert store.refused == [503, 503]
    assert_log_keys_equal(stored(store), canonical_log_keys(srv.chain), "the row store")
    retries = messages(caplog, "for transient error:")
    assert [m.split(" for ")[0] for m in retries] == ["Retry attempt 1/5", "Retry attempt 2/5"]
    assert "HTTP Error 503" in retries[0]
    (limits,) = messages(caplog, "the webhook loader neither rolls back nor deletes")
    assert "at-least-once" in limits and "a reorg stops a streaming load" in limits


def test_its_breaker_opens_after_failure_threshold_then_recovers(
    srv: DevServer, store: RowStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.refuse([503] * 3, after=1)
    breaker = {"failure_threshold": 3, "timeout_ms": 50, "success_threshold": 2}
    resilience = {"retry": {**FAST_RETRIES, "max_retries": 8}, "circuit_breaker": breaker}
    client = hook_client(srv, store, resilience=resilience)
    try:
        loader = client._get_loader("hook")
        drive(
            client.sql(QUERY).load("hook", "logs", stream=True),
            srv.chain,
            (),
            checked(srv.chain, "logs"),
        )
        assert loader.circuit_breaker.times_opened == 1
        assert loader.circuit_breaker.total_failures == 3
        assert not loader.circuit_breaker.is_open()
    finally:
        client.close()
    assert store.refused == [503] * 3
    assert messages(caplog, "Circuit breaker OPEN after 3 consecutive failures")
    assert messages(caplog, "Circuit breaker HALF-OPEN")
    assert messages(caplog, "Circuit breaker CLOSED")
    assert_log_keys_equal(stored(store), canonical_log_keys(srv.chain), "the row store")


@pytest.mark.parametrize(
    ("loader", "refusals"),
    [("webhook", [400]), ("webhook", [409]), ("webhook-patient", [400])],
)
def test_a_permanent_error_stops_it_at_once(
    srv: DevServer, store: RowStore, loader: str, refusals: list[int]
) -> None:
    store.refuse(refusals, after=1)
    client = hook_client(srv, store, loader, resilience={"retry": FAST_RETRIES})
    try:
        error = run_until_fatal(client.sql(QUERY).load("hook", "logs", stream=True), srv.chain)
    finally:
        client.close()
    assert str(error).startswith("FATAL: Permanent error loading batch (not retryable).")
    assert f"HTTP Error {refusals[0]}" in str(error)
    assert store.refused == refusals and store.accepted == 1  # never tried again


def test_its_own_error_classifier_decides_what_is_retried(srv: DevServer, store: RowStore) -> None:
    store.refuse([409, 409], after=1)
    client = hook_client(srv, store, "webhook-patient", resilience={"retry": FAST_RETRIES})
    try:
        run = client.sql(QUERY).load("hook", "logs", stream=True)
        drive(run, srv.chain, (), checked(srv.chain, "logs"))
    finally:
        client.close()
    assert store.refused == [409, 409]
    assert_log_keys_equal(stored(store), canonical_log_keys(srv.chain), "the row store")


def test_a_reorg_stops_it_with_the_rows_it_had(srv: DevServer, store: RowStore) -> None:
    """It cannot delete the replaced blocks' rows, so the load stops rather than keep
    them unnoticed; what it had written (the chain before the reorg) is intact."""
    before: list[LogKey] = []

    def reorg(chain: SimulatedChain) -> None:
        before.extend(canonical_log_keys(chain))
        chain.reorg(3)

    client = hook_client(srv, store)
    try:
        error = run_until_fatal(
            client.sql(QUERY).load("hook", "logs", stream=True), srv.chain, reorg
        )
    finally:
        client.close()
    assert str(error).startswith(
        "FATAL: a reorg replaced blocks 37..39 on mainnet, and the webhook loader cannot "
        "delete rows by block (it defines no delete_blocks()), so logs would keep rows"
    )
    assert "keeps_forked_rows = True" in str(error)
    assert_log_keys_equal(stored(store), before, "the row store")


def test_keeps_forked_rows_lets_it_stream_on_past_a_reorg(
    srv: DevServer, store: RowStore, caplog: pytest.LogCaptureFixture
) -> None:
    """The stream goes on at the fork; the store holds the chain as it was before the
    reorg plus the new fork's blocks: the replaced rows stay, as the class asked."""
    before: list[LogKey] = []

    def reorg(chain: SimulatedChain) -> None:
        with chain.changed:
            before.extend(canonical_log_keys(chain))
            chain.reorg(3)
            chain.mine(2)

    client = hook_client(srv, store, "webhook-log")
    try:
        run = client.sql(QUERY).load("hook", "logs", stream=True)
        driven = drive(run, srv.chain, [reorg, Mine(1)], checked(srv.chain, "logs"))
    finally:
        client.close()
    (reported,) = driven.reorgs()
    assert reported.metadata["invalidated_range"]["start"] == 37
    assert reported.metadata["rows_deleted"] == 0
    new_fork = [key for key in canonical_log_keys(srv.chain) if key[0] >= 37]
    assert_log_keys_equal_multiset(stored(store), before + new_fork)
    (kept,) = messages(caplog, "their rows stay in logs")
    assert kept.startswith("Reorg on mainnet: blocks 37..")


def assert_log_keys_equal_multiset(actual: list[LogKey], expected: list[LogKey]) -> None:
    """Old-fork rows share (block_num, log_index) with new-fork ones: compare whole keys."""
    assert sorted(actual) == sorted(expected), (
        f"{len(actual)} rows stored, {len(expected)} expected; "
        f"missing {sorted(set(expected) - set(actual))[:3]}, "
        f"extra {sorted(set(actual) - set(expected))[:3]}"
    )


def test_a_batch_load_retries_the_failed_write_alone(
    srv: DevServer, store: RowStore, caplog: pytest.LogCaptureFixture
) -> None:
    """Running the whole query again would post the first batches twice: only the
    refused post is retried."""
    store.refuse([503], after=2)
    client = hook_client(srv, store, resilience={"retry": FAST_RETRIES})
    try:
        results = list(client.sql(QUERY).load("hook", "logs"))
    finally:
        client.close()
    assert results[-1].metadata["operation"] == "commit"
    assert store.refused == [503] and store.accepted == len(results) - 1
    assert_log_keys_equal(stored(store), canonical_log_keys(srv.chain), "the row store")
    assert len(messages(caplog, "for transient error:")) == 1


def test_its_config_arrives_as_its_dataclass_and_is_checked(srv: DevServer) -> None:
    client = Client(srv.url)
    try:
        with pytest.raises(ConfigError, match=r"unknown key 'ulr' .*did you mean 'url'"):
            client.configure_connection("hook", "webhook", {"ulr": "http://127.0.0.1:9"})
        with pytest.raises(ConfigError, match=r"webhook config\['timeout'\] must be float"):
            client.configure_connection("hook", "webhook", {"url": "x", "timeout": "soon"})
        client.configure_connection("hook", "webhook", {"url": "http://127.0.0.1:9", "timeout": 2})
        assert client._get_loader("hook").config == WebhookConfig("http://127.0.0.1:9", 2)
        with pytest.raises(ConfigError, match="mode='overwrite' is not possible with the webhook"):
            client.sql(QUERY).load("hook", "logs", mode="overwrite")
    finally:
        client.close()
    direct = WebhookLoader(WebhookConfig("http://127.0.0.1:9"))  # a config object, as is
    assert direct.config == WebhookConfig("http://127.0.0.1:9")
