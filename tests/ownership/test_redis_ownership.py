"""One writer per stream on Redis (issue 9, defect 5): a lease key renewed while loading.

A second load of the stream is refused at once while the first runs; a SIGKILLed
load's lease (its process gone) is taken over at once; a lease lost while loading
stops the load before it writes; ``lease_seconds`` is validated.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from ownership_support import load_command, refused, running_load, stop_gracefully

from amp.devserver import DevServer
from amp.errors import ConfigError, StreamOwnedError
from amp.loaders.redis import RedisLoader
from crashkit import catch_up
from kit import REDIS_DB, REDIS_HOST, REDIS_PORT, connect_redis

REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    client = connect_redis()
    yield client
    client.close()


@pytest.fixture
def table(client: redis.Redis) -> Iterator[str]:
    name = f"own_{uuid.uuid4().hex[:10]}"
    yield name
    keys = list(client.scan_iter(f"*{name}*"))
    if keys:
        client.delete(*keys)


@pytest.fixture
def chain() -> Iterator[DevServer]:
    with DevServer(port=0, seed=5, initial_blocks=60, max_interval=10) as server:
        yield server


def test_second_load_of_a_stream_is_refused_naming_the_first(
    chain: DevServer, table: str, client: redis.Redis
) -> None:
    command = load_command(chain, REDIS_URL, table, "own")
    with running_load(command, "own") as first:
        started = time.monotonic()
        second = refused(command)
        assert time.monotonic() - started < 20, "refused, but not at once"
        assert "already being loaded" in second.stderr
        assert f"PID {first.process.pid}" in second.stderr
        assert f"amp_stream_owner:own:{table}:0" in second.stderr  # the lease key
        stop_gracefully(first)
    assert not client.exists(f"amp_stream_owner:own:{table}:0"), "released on stop"
    with running_load(command, "own") as again:
        stop_gracefully(again)
    catch_up(chain, "own", "redis", {"url": REDIS_URL}, table)
    assert client.zcard(f"{table}:_index") == chain.chain.canonical_table("logs").num_rows


def test_a_killed_loads_lease_is_taken_over_at_once(chain: DevServer, table: str) -> None:
    command = load_command(chain, REDIS_URL, table, "own")
    with running_load(command, "own") as first:
        first.kill()  # its lease stays for up to lease_seconds (30 s)
        started = time.monotonic()
        with running_load(command, "own") as restarted:
            assert time.monotonic() - started < 20, "waited for the dead owner's lease"
            stop_gracefully(restarted)


def test_a_lease_of_a_silent_owner_elsewhere_is_waited_for(client: redis.Redis, table: str) -> None:
    """An owner on another host that no longer renews (crashed there): wait it out."""
    key = f"amp_stream_owner:own:{table}:0"
    client.set(key, json.dumps({"host": "elsewhere", "pid": 1, "started": "", "token": ""}))
    client.pexpire(key, 1500)
    loader = RedisLoader({"url": REDIS_URL, "lease_seconds": 2}, "own")
    try:
        loader.connect()
        loader.claim_stream(table, 0)
        assert json.loads(client.get(key) or b"{}")["host"] == socket.gethostname()
    finally:
        loader.close()
    assert not client.exists(key)


def test_a_lease_of_a_live_owner_elsewhere_is_refused(client: redis.Redis, table: str) -> None:
    """An owner on another host that keeps renewing is alive: refused once seen renewing."""
    key = f"amp_stream_owner:own:{table}:0"
    value = json.dumps({"host": "elsewhere", "pid": 1, "started": "s", "token": "t"})
    client.set(key, value, px=3000)
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(0.3):
            client.pexpire(key, 3000)

    renewer = threading.Thread(target=renew, daemon=True)
    renewer.start()
    loader = RedisLoader({"url": REDIS_URL}, "own")
    try:
        loader.connect()
        with pytest.raises(StreamOwnedError, match="host elsewhere, PID 1"):
            loader.claim_stream(table, 0)
    finally:
        stop.set()
        renewer.join()
        loader.close()
    assert client.get(key) == value.encode(), "another's lease is never deleted"


def test_a_lost_lease_stops_the_load_before_it_writes(client: redis.Redis, table: str) -> None:
    loader = RedisLoader({"url": REDIS_URL, "lease_seconds": 1}, "own")
    try:
        loader.connect()
        loader.claim_stream(table, 0)
        key = f"amp_stream_owner:own:{table}:0"
        client.set(key, json.dumps({"host": "elsewhere", "pid": 2, "started": "", "token": ""}))
        deadline = time.monotonic() + 10
        with pytest.raises(StreamOwnedError, match="lost its lease"):
            while time.monotonic() < deadline:  # the renewer notices within lease/3
                loader.begin()
                loader.commit()
    finally:
        loader.close()


@pytest.mark.parametrize("value", [0, -1, True, "30", float("nan"), 7200])
def test_lease_seconds_is_validated(value: object) -> None:
    with pytest.raises(ConfigError, match="lease_seconds"):
        RedisLoader({"lease_seconds": value})
