"""The Delta loader's settings, each checked at configure time; its error classes; and
where its tables are under ``table_path``.

Why here: ``configure_connection`` builds the loader, so a bad value fails there with a
ConfigError naming the key and the fix, long before a load reaches the table.

Layout: table ``t`` is the Delta table ``<table_path>/t``; a parallel load's plan
(``t/parallel-plan``) is the state-only Delta table ``<table_path>/_amp_parallel_plans/t``.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from deltalake.exceptions import (
    CommitFailedError,
    DeltaProtocolError,
    SchemaMismatchError,
    TableNotFoundError,
)

from amp.config import number_at_least, typed
from amp.errors import ConfigError
from amp.loaders.delta.state import StateLostError
from amp.loop.parallel_plan import PLAN_SUFFIX
from amp.redact import is_secret_key, register_secret
from amp.streaming.classify import Classification, ErrorClassifier, ErrorKind

WHERE = "deltalake config"
PLAN_DIR = "_amp_parallel_plans"
_TABLE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
COMPRESSIONS = ("UNCOMPRESSED", "SNAPPY", "GZIP", "BROTLI", "LZ4", "ZSTD", "LZ4_RAW")
KEYS = frozenset(
    {
        "table_path",
        "storage_options",
        "partition_by",
        "target_file_size",
        "compression",
        "configuration",
        "max_commit_retries",
        "compact_every",
    }
)


class DeltaErrorClassifier(ErrorClassifier):
    """delta-rs's errors by type: a commit conflict (another writer committed first) is
    transient, the unit is replayed on the new version; protocol and schema errors, a
    missing table and a checkpoint lost to log cleanup are permanent; anything else by
    amp's general rules."""

    @classmethod
    def classify(cls, failure: BaseException | str) -> Classification:
        current = failure if isinstance(failure, BaseException) else None
        seen: set[int] = set()
        while current is not None and id(current) not in seen:
            seen.add(id(current))
            if isinstance(current, CommitFailedError):
                return Classification(ErrorKind.TRANSIENT, "delta commit conflict")
            if isinstance(current, StateLostError):
                return Classification(ErrorKind.PERMANENT, "delta state lost")
            if isinstance(current, DeltaProtocolError | SchemaMismatchError | TableNotFoundError):
                return Classification(ErrorKind.PERMANENT, f"delta {type(current).__name__}")
            current = current.__cause__ or current.__context__
        return super().classify(failure)


@dataclass(frozen=True)
class DeltaSettings:
    table_path: str
    local: bool
    storage_options: dict[str, str]
    configuration: dict[str, str]
    partition_by: list[str]
    target_file_size: int | None
    max_commit_retries: int | None
    compact_every: int
    compression: str

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> DeltaSettings:
        if "table_path" not in config:
            raise ConfigError(
                f"{WHERE} needs 'table_path': the directory (or object-store URI such as "
                "s3://bucket/prefix) under which each table is a Delta table"
            )
        path = typed(WHERE, "table_path", config["table_path"], str)
        if not path.strip():
            raise ConfigError(f"{WHERE}['table_path'] is empty; give a directory or a URI")
        scheme = urllib.parse.urlsplit(path).scheme
        local = scheme in ("", "file")
        if local:
            path = os.path.abspath(path[len("file://") :] if scheme == "file" else path)
        storage_options = _string_map("storage_options", config)
        for key, value in storage_options.items():
            if is_secret_key(key):
                register_secret(value)  # masked in any message, delta-rs's included
        compression = config.get("compression", "SNAPPY")
        if not isinstance(compression, str) or compression.upper() not in COMPRESSIONS:
            raise ConfigError(
                f"{WHERE}['compression'] must be one of {', '.join(COMPRESSIONS)}, "
                f"got {compression!r}"
            )
        return cls(
            table_path=path.rstrip("/") or "/",
            local=local,
            storage_options=storage_options,
            configuration=_string_map("configuration", config),
            partition_by=_columns(config.get("partition_by", [])),
            target_file_size=_optional_int("target_file_size", config, 1),
            max_commit_retries=_optional_int("max_commit_retries", config, 0),
            compact_every=_optional_int("compact_every", config, 0) or 0,
            compression=compression.upper(),
        )


def _string_map(key: str, config: Mapping[str, Any]) -> dict[str, str]:
    value = config.get(key, {})
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ConfigError(
            f"{WHERE}[{key!r}] must be a mapping of text keys to text values "
            f"(delta-rs takes them as strings), got a {type(value).__name__}"
        )
    return dict(value)


def _columns(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(
            f"{WHERE}['partition_by'] must be a column name or a list of column names, "
            f"got {value!r}"
        )
    return list(value)


def _optional_int(key: str, config: Mapping[str, Any], minimum: int) -> int | None:
    if key not in config:
        return None
    value = typed(WHERE, key, config[key], int)
    number_at_least(WHERE, key, value, minimum)
    return int(value)


def table_location(table_path: str, table: str) -> str:
    """Where ``table`` lives under ``table_path`` (see the module doc)."""
    plan = table.endswith(PLAN_SUFFIX)
    name = table[: -len(PLAN_SUFFIX)] if plan else table
    if not _TABLE_NAME.fullmatch(name):
        raise ConfigError(
            f"the Delta loader names a table's directory after it, so {name!r} must be "
            "letters, digits, '_', '.' or '-' (not starting with '_' or '.')"
        )
    parts = [table_path, PLAN_DIR, name] if plan else [table_path, name]
    return "/".join(part.rstrip("/") for part in parts)


def local_tables(table_path: str) -> list[str]:
    """Every amp table in a local ``table_path`` (plan tables as ``t/parallel-plan``)."""
    found: list[str] = []
    plans = os.path.join(table_path, PLAN_DIR)
    for directory, suffix in ((table_path, ""), (plans, PLAN_SUFFIX)):
        if not os.path.isdir(directory):
            continue
        for name in sorted(os.listdir(directory)):
            if os.path.isdir(os.path.join(directory, name, "_delta_log")):
                found.append(name + suffix)
    return found
