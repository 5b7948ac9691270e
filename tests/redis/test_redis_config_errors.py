"""Bad Redis configuration fails early and clearly: a bad option at configure time (a
ConfigError naming the key), an unreachable or refusing server at the first load (a
DestinationError naming host:port, never the password).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from amp.client import Client
from amp.devserver import DevServer
from amp.errors import ConfigError, DestinationError, FatalLoadError
from amp.loaders.redis import RedisLoader

SECRET = "s3cret-Pa55word"
NO_RETRIES = {"retry": {"enabled": False}}


@pytest.fixture(scope="module")
def server() -> Iterator[DevServer]:
    with DevServer(port=0, seed=1, initial_blocks=5) as srv:
        yield srv


def configure(server: DevServer, config: dict[str, Any]) -> Client:
    client = Client(server.url)
    client.configure_connection("bad", "redis", config)
    return client


def first_load_error(server: DevServer, config: dict[str, Any]) -> FatalLoadError:
    """The error a streaming load of ``config`` stops with (retries off: no waiting)."""
    client = configure(server, {**config, "resilience": NO_RETRIES})
    run = client.sql("SELECT * FROM eth_firehose.logs").load("bad", "t", stream=True)
    try:
        with pytest.raises(FatalLoadError) as caught:
            for result in run:
                assert not result.success, f"loaded although misconfigured: {result.metadata}"
    finally:
        run.close()
        client.close()
    return caught.value


def destination_error(exc: BaseException) -> DestinationError:
    """The loader's own error among the causes of ``exc``."""
    current: BaseException | None = exc
    while current is not None:
        if isinstance(current, DestinationError):
            return current
        current = current.__cause__
    raise AssertionError(f"no DestinationError caused {exc!r}")


@pytest.mark.parametrize("structure", ["list", "HASH", "", 7])
def test_unknown_data_structure(server: DevServer, structure: object) -> None:
    with pytest.raises(ConfigError, match=r"data_structure.*hash, stream"):
        configure(server, {"host": "127.0.0.1", "data_structure": structure})


@pytest.mark.parametrize("port", ["6379", 6379.0, True, None])
def test_port_of_the_wrong_type(server: DevServer, port: object) -> None:
    with pytest.raises(ConfigError, match=r"\['port'\] must be int"):
        configure(server, {"host": "127.0.0.1", "port": port})


@pytest.mark.parametrize("beside", ["host", "port", "db", "username", "password"])
def test_url_with_a_part_it_already_decides_is_refused(server: DevServer, beside: str) -> None:
    """A url decides host, port, db and credentials: a second answer beside it is refused
    (it used to be ignored silently), and the password shown in neither."""
    values = {"host": "10.0.0.9", "port": 6390, "db": 3, "username": "amp", "password": SECRET}
    config = {"url": f"redis://:{SECRET}@127.0.0.1:6379/9", beside: values[beside]}
    with pytest.raises(ConfigError, match=rf"'url' and also '{beside}'.*'url' alone") as caught:
        configure(server, config)
    assert SECRET not in str(caught.value)


def test_unknown_key_is_named(server: DevServer) -> None:
    with pytest.raises(ConfigError, match="hots"):
        configure(server, {"hots": "127.0.0.1"})


@pytest.mark.parametrize(
    "config",
    [
        {"host": "127.0.0.1", "port": 1, "db": 9, "password": SECRET},
        {"url": f"redis://:{SECRET}@127.0.0.1:1/9"},
        {"url": f"redis://amp:{SECRET}@127.0.0.1:1/9"},
    ],
    ids=["host-port", "url", "url-with-user"],
)
def test_unreachable_redis_names_host_and_port_not_the_password(
    server: DevServer, config: dict[str, Any]
) -> None:
    assert SECRET not in repr(RedisLoader(config, "bad"))
    error = first_load_error(server, config)
    for message in (str(destination_error(error)), str(error)):
        assert "127.0.0.1:1" in message, message
        assert "cannot connect to Redis" in message, message
        assert SECRET not in message, f"the password leaked: {message}"


def test_wrong_credentials_are_refused_clearly(server: DevServer) -> None:
    """A user the server does not know: Redis answers WRONGPASS."""
    config = {"host": "127.0.0.1", "port": 6379, "db": 9, "username": "amp_nobody"}
    config["password"] = SECRET
    error = first_load_error(server, config)
    for message in (str(destination_error(error)), str(error)):
        assert "127.0.0.1:6379" in message and "refused the credentials" in message, message
        assert "'password'" in message, message
        assert SECRET not in message, f"the password leaked: {message}"
    assert "Permanent error" in str(error), "a refused password is not worth retrying"


def test_password_for_a_server_without_one_is_refused_clearly(server: DevServer) -> None:
    """The test Redis has no password: a configured one is a mistake to report (Redis
    answers ``AUTH <password> called without any password configured``), not to ignore."""
    config = {"host": "127.0.0.1", "port": 6379, "db": 9, "password": "nope"}
    with pytest.raises(DestinationError) as direct:
        RedisLoader(config, "bad").connect()
    message = str(direct.value)
    assert "127.0.0.1:6379" in message and "password" in message, message
    assert "nope" not in message, message
