"""Destinations amp loads into, found by name (``'postgresql'``, ``'duckdb'``, ...)."""

from __future__ import annotations

from amp.config import suggest
from amp.errors import ConfigError
from amp.loaders.base import Loader, LoadMode
from amp.loaders.duckdb import DuckDBLoader
from amp.loaders.kafka import KafkaLoader
from amp.loaders.postgresql import PostgreSQLLoader
from amp.loaders.redis import RedisLoader

__all__ = ["LOADERS", "LoadMode", "Loader", "loader_class"]

LOADERS: dict[str, type[Loader]] = {
    PostgreSQLLoader.loader_type: PostgreSQLLoader,
    DuckDBLoader.loader_type: DuckDBLoader,
    RedisLoader.loader_type: RedisLoader,
    KafkaLoader.loader_type: KafkaLoader,
}


def loader_class(name: str) -> type[Loader]:
    """The loader registered as ``name``; ConfigError listing the known ones otherwise."""
    try:
        return LOADERS[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown loader {name!r}{suggest(str(name), LOADERS)}; "
            f"available loaders: {', '.join(sorted(LOADERS))}"
        ) from None
