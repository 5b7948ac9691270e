"""``amp load --config amp.toml``: the loads of one process, read from a TOML file.

Why a file turns into the flags' Namespace: each ``[[load]]`` table becomes the
``argparse.Namespace`` its ``amp load`` flags would have made, so a load from a file and
the same load from flags run through one code path (destination URL, ``--option``,
parallel flags, checkpoints). Every flag has a key (``FLAG_KEYS``, also in the README).

The whole file is checked before anything connects: unknown keys name the closest valid
one, values are type-checked, and every message says which ``[[load]]`` (index and
table) is wrong. ``${NAME}`` in a string is the environment variable NAME (``$${`` is a
literal ``${``); an interpolated value is a secret to this process from then on
(``amp.redact.register_secret``), so no message or log line shows it.
"""

from __future__ import annotations

import argparse
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amp.cli_parallel import FIELDS as PARALLEL_FIELDS
from amp.config import check_keys, typed
from amp.errors import ConfigError
from amp.redact import register_secret

# Top-level keys: the process-wide flags, the loads' default server and token, the loads.
TOP_KEYS: dict[str, type | tuple[type, ...]] = {
    "server": str,
    "auth_token": str,
    "log_format": str,
    "verbose": bool,
    "no_progress": bool,
    "metrics_port": int,
    "metrics_host": str,
    "stall_seconds": (int, float),
    "load": list,
}
# Keys of a [[load]] table; ``server`` and ``auth_token`` replace the top-level ones.
LOAD_KEYS: dict[str, type | tuple[type, ...]] = {
    "query": str,
    "to": str,
    "table": str,
    "stream": bool,
    "mode": str,
    "checkpoint": bool,
    "idempotency": bool,
    "connection_name": str,
    "server": str,
    "auth_token": str,
    "parallel": dict,
    "options": dict,
}
REQUIRED_LOAD_KEYS = ("query", "to", "table")
# Keys of a [load.parallel] table → the parallel flags' argparse dests.
PARALLEL_KEYS: dict[str, str] = {
    field if field != "table_name" else "partition_table": dest
    for dest, field in PARALLEL_FIELDS.items()
}
PARALLEL_KEYS["num_workers"] = "parallel"
PARALLEL_TYPES: dict[str, type] = {
    "num_workers": int,
    "min_block": int,
    "max_block": int,
    "partition_size": int,
    "reorg_buffer": int,
    "partition_table": str,
    "block_column": str,
    "executor": str,
}
# Every ``amp load`` flag: its key and where the key goes (README, amp load section).
TOP, EITHER, LOAD = "top level", "top level or [[load]]", "[[load]]"
FLAG_KEYS: dict[str, tuple[str, str]] = {
    "--server": ("server", EITHER),
    "--auth-token": ("auth_token", EITHER),
    "--query": ("query", LOAD),
    "--to": ("to", LOAD),
    "--table": ("table", LOAD),
    "--stream": ("stream", LOAD),
    "--mode": ("mode", LOAD),
    "--checkpoint": ("checkpoint", LOAD),
    "--idempotency": ("idempotency", LOAD),
    "--connection-name": ("connection_name", LOAD),
    "--option": ("KEY = VALUE", "[load.options]"),
    "--no-progress": ("no_progress", TOP),
    "--metrics-port": ("metrics_port", TOP),
    "--metrics-host": ("metrics_host", TOP),
    "--stall-seconds": ("stall_seconds", TOP),
    "--log-format": ("log_format", TOP),
    "--verbose": ("verbose", TOP),
    **{
        f"--{dest.replace('_', '-')}": (key, "[load.parallel]")
        for key, dest in PARALLEL_KEYS.items()
    },
}

# ``$${`` (a literal ``${``) or ``${NAME}``.
_REFERENCE = re.compile(r"\$\$\{|\$\{([^}]*)\}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class ConfigFile:
    """A checked config file: process-wide settings and one Namespace per load."""

    settings: dict[str, Any]
    loads: list[argparse.Namespace]


def interpolate(where: str, text: str) -> str:
    """``text`` with each ``${NAME}`` replaced by the environment variable NAME (each
    value registered as a secret) and each ``$${`` by ``${``."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        name = match.group(1)
        if not _NAME.fullmatch(name):
            raise ConfigError(
                f"{where}: ${{{name}}} is not a variable name (letters, digits and _); "
                "write $${ for a literal ${"
            )
        value = os.environ.get(name)
        if value is None:
            raise ConfigError(
                f"{where} refers to ${{{name}}}, which is not set in the environment; "
                f"set {name} (or write $${{ for a literal ${{)"
            )
        register_secret(value)
        return value

    return _REFERENCE.sub(replace, text)


def _interpolated(where: str, value: Any) -> Any:
    """``value`` with every string in it (in lists and tables too) interpolated."""
    if isinstance(value, str):
        return interpolate(where, value)
    if isinstance(value, Mapping):
        return {key: _interpolated(f"{where}.{key}", item) for key, item in value.items()}
    if isinstance(value, list):
        return [_interpolated(f"{where}[{i}]", item) for i, item in enumerate(value)]
    return value


def _check_types(where: str, table: Mapping[str, Any], kinds: Mapping[str, Any]) -> None:
    check_keys(where, table, kinds)
    for key, value in table.items():
        typed(where, key, value, kinds[key])


def read_config(path: str | Path) -> ConfigFile:
    """The checked contents of the TOML file at ``path``; ConfigError naming the
    problem (and the ``[[load]]``) otherwise."""
    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror}") from None
    _check_types(str(path), document, TOP_KEYS)
    settings = {key: _interpolated(key, value) for key, value in document.items() if key != "load"}
    if settings.get("log_format", "text") not in ("text", "json"):
        raise ConfigError(f"{path}: log_format must be 'text' or 'json'")
    tables = document.get("load") or []
    if not tables:
        raise ConfigError(f"{path} has no [[load]] table; add one per load, e.g.\n{EXAMPLE}")
    loads = [_load_namespace(path, index, table, settings) for index, table in enumerate(tables)]
    seen: dict[str, int] = {}
    for index, load in enumerate(loads):
        if load.table in seen:
            raise ConfigError(
                f"{path}: [[load]] {seen[load.table]} and [[load]] {index} both load table "
                f"{load.table!r}: tables name the progress lines, metrics and /healthz of "
                "one process, so give each load its own table"
            )
        seen[load.table] = index
    return ConfigFile(settings, loads)


def load_label(index: int, table: object) -> str:
    """How messages name a load of the file: ``[[load]] 1 (table 'logs')``."""
    return f"[[load]] {index}" + (f" (table {table!r})" if isinstance(table, str) else "")


def _load_namespace(
    path: str | Path, index: int, table: Any, settings: Mapping[str, Any]
) -> argparse.Namespace:
    label = load_label(index, table.get("table") if isinstance(table, Mapping) else None)
    where = f"{path}: {label}"
    try:
        _check_types(where, table, LOAD_KEYS)
        _check_types(f"{where}.parallel", table.get("parallel", {}), PARALLEL_TYPES)
        missing = [key for key in REQUIRED_LOAD_KEYS if key not in table]
        if missing:
            raise ConfigError(f"{where} has no {', '.join(missing)}; each [[load]] needs them")
        values = {key: _interpolated(f"{where}.{key}", value) for key, value in table.items()}
    except ConfigError as exc:
        raise ConfigError(str(exc) if where in str(exc) else f"{where}: {exc}") from None
    if values.get("mode", "append") not in ("append", "overwrite"):
        raise ConfigError(f"{where}: mode must be 'append' or 'overwrite'")
    args = argparse.Namespace(
        command="load",
        label=label,
        server=values.get("server", settings.get("server")),
        auth_token=values.get("auth_token", settings.get("auth_token")),
        query=values["query"],
        to=values["to"],
        table=values["table"],
        stream=values.get("stream", False),
        mode=values.get("mode", "append"),
        checkpoint=values.get("checkpoint", False),
        idempotency=values.get("idempotency", False),
        connection_name=values.get("connection_name", "cli"),
        options=[(key, value) for key, value in values.get("options", {}).items()],
        no_progress=settings.get("no_progress", False),
        metrics_port=settings.get("metrics_port"),
        **{dest: None for dest in PARALLEL_FIELDS},
    )
    for key, value in values.get("parallel", {}).items():
        setattr(args, PARALLEL_KEYS[key], value)
    return args


EXAMPLE = """\
server = "grpc://localhost:1602"

[[load]]
query = "SELECT * FROM eth_firehose.logs"
to = "postgresql://postgres:${PGPASSWORD}@localhost:5432/chain"
table = "logs"
stream = true
checkpoint = true
"""
