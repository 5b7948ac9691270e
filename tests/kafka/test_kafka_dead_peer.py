"""A silent Kafka broker: connections that stop answering without closing.

``dead_peer_timeout`` becomes librdkafka's ``socket.timeout.ms`` (a request unanswered that
long drops its connection, and librdkafka reconnects) with TCP keepalive on; every wait of
the loader (flush, commit, abort) already ends at ``timeout``. The fault test puts a real
forwarding proxy in front of a broker of its own (which advertises the proxy, so every
client connection goes through it) and silences it mid-load: the load must carry on
within the bounds and the topic must end exactly equal to the chain.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from amp.client import Client
from amp.devserver import DevServer
from amp.errors import ConfigError
from amp.loaders.kafka import KafkaLoader
from kafkakit import assert_topic_matches_chain, kafka_config, start_tansu
from kit import caught_up
from tcpproxy import SILENCES, StallClock, TcpProxy, retries_telling, run_through_silence

BOUND = 2.0  # dead_peer_timeout of the fault test, in seconds
WAIT = 3.0  # the loader's 'timeout' there: flush, commit and abort give up after it
LOOSE_LIMIT = 30.0  # the load must go on well before this, even on a loaded machine
SERVERS = {"bootstrap_servers": "127.0.0.1:9"}


# -- settings ------------------------------------------------------------------------------


def test_clients_get_keepalive_and_a_socket_timeout_of_the_bound() -> None:
    """librdkafka's own default is 60 s; producer, admin client and consumers alike."""
    default = KafkaLoader(SERVERS)
    bounded = KafkaLoader({**SERVERS, "dead_peer_timeout": 4.5})
    for producer in (True, False):
        assert default._client_config(producer)["socket.keepalive.enable"] is True
        assert default._client_config(producer)["socket.timeout.ms"] == 30_000
        assert bounded._client_config(producer)["socket.timeout.ms"] == 4_500
    own = KafkaLoader({**SERVERS, "producer_config": {"socket.timeout.ms": 5000}})
    assert own._client_config(True)["socket.timeout.ms"] == 5000
    assert own._client_config(False)["socket.timeout.ms"] == 5000


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"dead_peer_timeout": 0}, r"\['dead_peer_timeout'\] must be more than 0 seconds"),
        ({"dead_peer_timeout": math.nan}, r"\['dead_peer_timeout'\] must be a finite number"),
        ({"dead_peer_timeout": "5"}, r"\['dead_peer_timeout'\] must be int or float"),
        ({"dead_peer_timeout": True}, r"\['dead_peer_timeout'\] must be int or float"),
        (
            {"dead_peer_timeout": 5, "producer_config": {"socket.timeout.ms": 100}},
            "set 'socket.timeout.ms' either as 'dead_peer_timeout' or in producer_config",
        ),
        # librdkafka: socket.timeout.ms <= transaction.timeout.ms (60 s) + 100 ms
        ({"dead_peer_timeout": 61}, r"transaction\.timeout\.ms.*\(dead_peer_timeout sets"),
    ],
)
def test_bad_dead_peer_timeout_is_refused_at_configure(extra: dict[str, Any], message: str) -> None:
    client = Client("grpc://127.0.0.1:1")
    with pytest.raises(ConfigError, match=message):
        client.configure_connection("k", "kafka", {**SERVERS, **extra})


# -- a silent broker ---------------------------------------------------------------------------


@pytest.fixture
def proxied_broker(tmp_path: Path) -> Iterator[TcpProxy]:
    """A broker of this test that advertises a proxy in front of it: the proxy."""
    proxy = TcpProxy("127.0.0.1", 9)  # retargeted at the broker once it runs
    proxy.start()
    broker = start_tansu(tmp_path, advertised_port=proxy.port)
    proxy.target = ("127.0.0.1", int(broker.bootstrap.rsplit(":", 1)[1]))
    try:
        yield proxy
    finally:
        proxy.stop()
        broker.stop()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("how", SILENCES)
def test_silent_broker_is_noticed_and_the_load_completes_exactly(
    chain_server: DevServer, proxied_broker: TcpProxy, how: str
) -> None:
    """ "stall": nothing moves until the load notices (its flush or commit ends at
    ``timeout``, a transient error; the abort that follows waits ``timeout`` too) and
    the test resumes the path. "silence": the open connections are dead for good;
    librdkafka drops one whose request goes unanswered for ``dead_peer_timeout`` and
    reconnects, and a producer that still cannot abort is replaced by a new one."""
    proxy = proxied_broker
    address = f"127.0.0.1:{proxy.port}"
    config = kafka_config(address, dead_peer_timeout=BOUND, timeout=WAIT)
    config["commit_grouping"] = {"enabled": False}  # the silence falls between commits
    clock = StallClock(proxy, how)
    client = Client(chain_server.url)
    try:
        client.configure_connection("k", "kafka", config)
        run = client.sql("SELECT * FROM eth_firehose.logs").load("k", "logs", stream=True)
        with retries_telling(clock) as retries:
            resumed_after = run_through_silence(
                run, clock, lambda result: caught_up(result, chain_server.chain)
            )
    finally:
        client.close()

    assert BOUND * 0.9 <= resumed_after < LOOSE_LIMIT, f"went on after {resumed_after:.2f} s"
    # A stall always costs one retry; after a silence librdkafka may recover by itself.
    assert len(retries) == 1 if how == "stall" else len(retries) <= 1
    if retries:
        assert "_TIMED_OUT" in retries[0], retries
        assert WAIT * 0.9 <= clock.seconds_to_notice() < LOOSE_LIMIT
    assert_topic_matches_chain(address, config["topic"], chain_server.chain)
