"""The ``deltalake`` loader name when the ``delta`` extra is not installed.

Why a stand-in: amp's base install has no delta-rs, and ``loader='deltalake'`` must
then say how to get it rather than call the loader unknown.
"""

from __future__ import annotations

from typing import Any

from amp.errors import ConfigError
from amp.loaders.base import DataLoader


def _missing() -> ConfigError:
    return ConfigError(
        "loader 'deltalake' needs the deltalake package (delta-rs): pip install 'amp-python[delta]'"
    )


class DeltaLakeNotInstalled(DataLoader[dict[str, Any]]):
    """Refuses at configure time, naming the extra to install; every method a loader
    must define gives the same answer."""

    loader_type = "deltalake"

    def __init__(self, config: Any = None, connection_name: str = "") -> None:
        raise _missing()

    def connect(self) -> None:
        raise _missing()

    def write(self, table: str, batch: Any, block_range: Any = None) -> int:
        raise _missing()
