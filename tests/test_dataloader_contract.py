"""What ``DataLoader`` refuses and infers from a subclass, at definition or construction
(the loads themselves are in tests/client/test_client_custom_loader.py and
test_client_legacy_loader.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict

import pyarrow as pa
import pytest

from amp.errors import ConfigError
from amp.loaders import DataLoader, LoadMode, loader_class


class Settings(TypedDict):
    path: str
    depth: NotRequired[int]


class TypedDictLoader(DataLoader[Settings]):
    def connect(self) -> None:
        pass

    def write(self, table: str, batch: pa.RecordBatch, block_range: Any = None) -> int:
        return batch.num_rows


@dataclass
class Plain:
    path: str


class OlderLoader(DataLoader[Plain]):
    def connect(self) -> None:
        pass

    def _load_batch_impl(self, batch: pa.RecordBatch, table_name: str, **kwargs: Any) -> int:
        return batch.num_rows


def test_a_typeddict_config_is_checked_and_kept_as_a_dict() -> None:
    assert TypedDictLoader.config_keys == {"path", "depth"}
    assert TypedDictLoader({"path": "x", "depth": 2}).config == {"path": "x", "depth": 2}
    with pytest.raises(ConfigError, match="TypedDictLoader config needs 'path'"):
        TypedDictLoader({"depth": 2})
    with pytest.raises(ConfigError, match=r"\['depth'\] must be int, got True"):
        TypedDictLoader({"path": "x", "depth": True})


def test_a_config_type_amp_cannot_build_is_refused_at_class_definition() -> None:
    with pytest.raises(TypeError, match="must be a dataclass, a TypedDict or dict"):

        class Numbered(DataLoader[int]):  # type: ignore[type-var]
            def connect(self) -> None:
                pass


def test_transactional_needs_all_three_hooks() -> None:
    with pytest.raises(TypeError, match=r"transactional = True without its own commit\(\)"):

        class HalfTransactional(OlderLoader):
            transactional = True

            def begin(self) -> None:
                pass

            def rollback(self) -> None:
                pass


def test_a_loader_that_cannot_write_is_refused_when_made() -> None:
    class Mute(DataLoader[Plain]):
        def connect(self) -> None:
            pass

    with pytest.raises(TypeError, match=r"must define write\(table, batch, block_range\)"):
        Mute({"path": "x"})


def test_what_the_loop_can_count_on_follows_what_the_class_defines() -> None:
    older = OlderLoader({"path": "x"})
    assert (older.deletes_blocks, older.undoes_writes, older.can_replay) == (False, False, False)
    assert not older.can_overwrite
    assert "neither rolls back nor deletes rows by block" in (older.delivery_limits() or "")
    with pytest.raises(ConfigError, match="defines no prepare_table"):
        older.prepare_table("t", pa.schema([]), LoadMode.OVERWRITE, "_block_num")
    for name in ("postgresql", "duckdb", "redis", "kafka", "iceberg"):
        cls = loader_class(name)
        assert cls.delete_blocks is not DataLoader.delete_blocks, name
        assert cls.rollback is not DataLoader.rollback, name
    assert loader_class("duckdb")({}).delivery_limits() is None
    assert not loader_class("kafka").supports_overwrite  # declared, not inferred


def test_a_subclass_keeps_its_parents_declared_keys() -> None:
    class Narrow(OlderLoader):
        config_keys = frozenset({"path"})

    class Child(Narrow):
        pass

    assert Child.config_keys == {"path"} and Child.config_type is Plain
    assert Child({"path": "y"}).config == Plain("y")
