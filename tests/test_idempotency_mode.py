"""``idempotency.mode``: amp uses the strongest mode each destination offers; asking for
transactions a destination does not have is a ConfigError at configure time (defect 12)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from amp.client import Client
from amp.errors import ConfigError

# destination → (connection config, the mode in effect there)
IN_EFFECT = {
    "postgresql": "transactional",
    "duckdb": "transactional",
    "kafka": "transactional",  # producer transactions
    "redis": "tracking",  # deterministic keys, the range marked after the rows
    "iceberg": "transactional",  # one catalog commit per unit
}


def _config(kind: str, tmp_path: Path, mode: str) -> dict[str, Any]:
    base: dict[str, Any] = {
        "postgresql": {"host": "127.0.0.1", "port": 5432, "database": "test"},
        "duckdb": {"database": str(tmp_path / "mode.duckdb")},
        "kafka": {"bootstrap_servers": "127.0.0.1:9092"},
        "redis": {"host": "127.0.0.1", "port": 6379},
        "iceberg": {
            "catalog_config": {
                "type": "sql",
                "uri": f"sqlite:///{tmp_path}/catalog.db",
                "warehouse": f"file://{tmp_path}/warehouse",
            }
        },
    }[kind]
    return {**base, "idempotency": {"enabled": True, "mode": mode}}


@pytest.mark.parametrize("mode", ["auto", "tracking", "transactional"])
@pytest.mark.parametrize("kind", list(IN_EFFECT))
def test_the_mode_in_effect_per_destination(kind: str, mode: str, tmp_path: Path) -> None:
    client = Client("grpc://127.0.0.1:1")  # configure only: nothing is contacted
    try:
        if IN_EFFECT[kind] == "tracking" and mode == "transactional":
            with pytest.raises(ConfigError, match=r"\['mode'\] is 'transactional'.*redis"):
                client.configure_connection("dest", kind, _config(kind, tmp_path, mode))
            assert client.list_connections() == {}
            return
        client.configure_connection("dest", kind, _config(kind, tmp_path, mode))
        assert client._get_loader("dest").idempotency_mode == IN_EFFECT[kind]
    finally:
        client.close()
