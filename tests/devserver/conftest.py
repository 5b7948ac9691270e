"""Fixtures of the dev server conformance suite (protocol §1-§5 over bare pyarrow.flight)."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow.flight as flight
import pytest

from amp.devserver import DevServer


@pytest.fixture
def client(amp_devserver: DevServer) -> Iterator[flight.FlightClient]:
    """A bare Flight client of the ``amp_devserver`` fixture's server."""
    with flight.connect(amp_devserver.url) as connection:
        yield connection
