"""The ``StateStore`` contract (``tests/test_state_store_contract.py``) run against the
Delta loader: the same tests, with a subject whose state lives in a Delta table's
commits under pytest's ``tmp_path``. The checkpoint history is read back from the
commit files themselves (the documents a commit's ``amp`` payload puts)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import test_state_store_contract as contract
from amp.loaders.base import DataLoader

# The contract's tests, collected here with this module's ``subject``.
from test_state_store_contract import (  # noqa: F401
    test_a_commit_keeps_state_for_the_next_process,
    test_a_rollback_discards_every_state_write,
    test_a_transaction_reads_its_own_writes,
    test_a_unit_saves_its_ranges_and_checkpoint_together,
    test_cleanup_deletes_only_old_ranges,
    test_forget_ranges_from_a_reorg_point,
    test_opening_a_range_deletes_its_rows_unless_it_is_processed_exactly,
    test_the_reorg_archive_keeps_history,
)


def _delta_history(loader: DataLoader[Any], connection: str) -> list[dict[str, Any]]:
    """Archived checkpoints put by the table's commits, oldest archive first."""
    log = Path(loader.location(contract.TABLE), "_delta_log")  # type: ignore[attr-defined]
    found: dict[tuple[Any, ...], dict[str, Any]] = {}
    for path in sorted(log.glob("*.json")):
        for line in path.read_text().splitlines():
            info = json.loads(line).get("commitInfo")
            if info is None or "amp" not in info:
                continue
            for key, document in json.loads(info["amp"])["put"]:
                if key[:4] == [contract.PREFIX, "checkpoint_history", connection, contract.TABLE]:
                    found[tuple(key)] = document["checkpoint"]
    return [found[key] for key in sorted(found, key=lambda key: key[5])]


@pytest.fixture
def subject(tmp_path: Path) -> Iterator[contract.Subject]:
    connection = f"contract_{uuid.uuid4().hex[:10]}"
    config = {"table_path": str(tmp_path / "tables")}
    subject = contract.Subject("deltalake", connection, config, _delta_history)
    try:
        yield subject
    finally:
        for loader in subject.opened:
            loader.close()
