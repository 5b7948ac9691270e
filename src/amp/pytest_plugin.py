"""pytest plugin shipped with amp: the ``amp_devserver`` fixture for users' own tests.

Installed through the ``pytest11`` entry point, so any project that depends on amp can
write ``def test_x(amp_devserver): ...`` and get a fresh dev server per test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from amp.devserver import DevServer


@pytest.fixture
def amp_devserver() -> Iterator[DevServer]:
    """A running dev server (seed 1, 100 blocks, no new blocks unless mined), per test."""
    with DevServer(port=0, seed=1, initial_blocks=100) as server:
        yield server
