"""The Iceberg loader's configuration, checked at ``configure_connection``.

Why all of it up front: a catalog type misspelled, a partition transform pyiceberg does
not know or a secret shown in an error would otherwise surface in the middle of a load,
after rows were fetched. Everything that can be checked without reaching the catalog is
checked here, each error naming the key and the fix; secrets of ``catalog_config``
(passwords, tokens, credentials, userinfo in URIs) never appear in a message.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from amp.config import number_at_least, typed
from amp.errors import ConfigError
from amp.redact import MASK, is_secret_key, redact_text, register_secret

WHERE = "iceberg config"
CATALOG_TYPES = ("sql", "rest", "hive", "glue", "dynamodb", "in-memory", "bigquery")
TIMESTAMP_NS_MODES = ("exact", "truncate")
DEFAULT_NAMESPACE = "amp"
DEFAULT_COMMIT_RETRIES = 20
DEFAULT_MAX_SNAPSHOTS = 100
# pyiceberg's own transform names, with their argument where they take one.
_TRANSFORM = re.compile(r"^(identity|year|month|day|hour|void|bucket\[(\d+)\]|truncate\[(\d+)\])$")
# Words in a catalog property's name that make its value a secret, beyond amp.redact's.
_CATALOG_SECRET_WORDS = ("credential", "secret", "token", "password", "session")


def is_catalog_secret(key: str) -> bool:
    """Whether a ``catalog_config`` key holds a secret (``s3.secret-access-key``,
    ``credential``, ``token``, ``s3.session-token``, ...)."""
    name = key.lower()
    return is_secret_key(name) or any(word in name for word in _CATALOG_SECRET_WORDS)


def redacted_catalog(config: Mapping[str, Any]) -> dict[str, str]:
    """``catalog_config`` as it may be shown: secrets masked, URIs without userinfo."""
    return {
        key: MASK if is_catalog_secret(key) else redact_text(str(value))
        for key, value in sorted(config.items())
    }


@dataclass(frozen=True)
class PartitionField:
    """One entry of ``partition_spec``: ``transform`` applied to ``column``."""

    column: str
    transform: str
    name: str | None


@dataclass(frozen=True)
class IcebergSettings:
    """The checked configuration (``catalog`` still holds its secrets: it is given to
    pyiceberg only; ``catalog_shown`` is what messages may carry)."""

    catalog_name: str
    catalog: dict[str, str]
    namespace: tuple[str, ...]
    partition_spec: tuple[PartitionField, ...]
    table_properties: dict[str, str]
    timestamp_ns: str
    commit_retries: int
    max_snapshots: int

    @property
    def catalog_shown(self) -> dict[str, str]:
        return redacted_catalog(self.catalog)

    @property
    def catalog_type(self) -> str:
        return self.catalog.get("type", "rest" if "uri" in self.catalog else "?")

    @property
    def sql_uri(self) -> str | None:
        """The SQLAlchemy URI of a SQL catalog (None for another type)."""
        return self.catalog.get("uri") if self.catalog_type == "sql" else None


def _catalog(config: Mapping[str, Any]) -> dict[str, str]:
    if "catalog_config" not in config:
        raise ConfigError(
            f"{WHERE} needs 'catalog_config', the properties given to pyiceberg's "
            "load_catalog, e.g. {'type': 'sql', 'uri': 'sqlite:////data/catalog.db', "
            "'warehouse': 'file:///data/warehouse'}"
        )
    given = config["catalog_config"]
    if not isinstance(given, Mapping) or not given:
        raise ConfigError(
            f"{WHERE}['catalog_config'] must be a non-empty dict of catalog properties, "
            f"got {type(given).__name__}"
        )
    catalog: dict[str, str] = {}
    for key, value in given.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"{WHERE}['catalog_config'] keys must be non-empty strings")
        if isinstance(value, bool):
            value = "true" if value else "false"
        if not isinstance(value, str | int | float):
            shown = MASK if is_catalog_secret(key) else type(value).__name__
            raise ConfigError(
                f"{WHERE}['catalog_config'][{key!r}] must be a string (or a number), got {shown}"
            )
        catalog[key] = str(value)
        if is_catalog_secret(key):
            register_secret(catalog[key])
    kind = catalog.get("type")
    if kind is None and "uri" not in catalog:
        raise ConfigError(
            f"{WHERE}['catalog_config'] needs 'type' (one of {', '.join(CATALOG_TYPES)}); "
            "e.g. {'type': 'sql', 'uri': 'sqlite:////data/catalog.db', "
            "'warehouse': 'file:///data/warehouse'}"
        )
    if kind is not None and kind not in CATALOG_TYPES:
        raise ConfigError(
            f"{WHERE}['catalog_config']['type'] must be one of {', '.join(CATALOG_TYPES)}, "
            f"got {kind!r}"
        )
    if kind == "sql":
        _check_sql_catalog(catalog)
    return catalog


def _check_sql_catalog(catalog: dict[str, str]) -> None:
    """A SQL catalog needs a SQLAlchemy URI it can parse and a warehouse to write to."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    uri = catalog.get("uri")
    if not uri:
        raise ConfigError(
            f"{WHERE}['catalog_config'] of type 'sql' needs 'uri', a SQLAlchemy URL such as "
            "'sqlite:////data/catalog.db' or 'postgresql+psycopg://user@host:5432/db'"
        )
    try:
        url = make_url(uri)
    except ArgumentError:
        raise ConfigError(
            f"{WHERE}['catalog_config']['uri'] {redact_text(uri)!r} is not a SQLAlchemy URL; "
            "e.g. 'sqlite:////data/catalog.db' or 'postgresql+psycopg://user@host:5432/db'"
        ) from None
    if url.password:
        register_secret(str(url.password))
    driver = url.drivername.partition("+")[2]
    if url.get_backend_name() == "postgresql" and driver not in ("psycopg", ""):
        raise ConfigError(
            f"{WHERE}['catalog_config']['uri'] uses the driver {driver!r}; amp ships "
            "psycopg 3: write 'postgresql+psycopg://...'"
        )
    if not catalog.get("warehouse"):
        raise ConfigError(
            f"{WHERE}['catalog_config'] of type 'sql' needs 'warehouse', where table files "
            "go: e.g. 'file:///data/warehouse' or 's3://bucket/prefix'"
        )


def _namespace(config: Mapping[str, Any]) -> tuple[str, ...]:
    value = config.get("namespace", DEFAULT_NAMESPACE)
    typed(WHERE, "namespace", value, str)
    parts = tuple(value.split("."))
    if not value or any(not part for part in parts):
        raise ConfigError(
            f"{WHERE}['namespace'] must be a name like 'amp' or 'lake.raw' (dots separate "
            f"nested namespaces; no empty part), got {value!r}"
        )
    return parts


def _partition_spec(config: Mapping[str, Any]) -> tuple[PartitionField, ...]:
    given = config.get("partition_spec", [])
    if not isinstance(given, list | tuple):
        raise ConfigError(
            f"{WHERE}['partition_spec'] must be a list of {{'column': ..., 'transform': ...}}, "
            f"e.g. [{{'column': 'block_num', 'transform': 'truncate[100000]'}}]"
        )
    fields: list[PartitionField] = []
    for index, entry in enumerate(given):
        where = f"{WHERE}['partition_spec'][{index}]"
        if not isinstance(entry, Mapping) or set(entry) - {"column", "transform", "name"}:
            raise ConfigError(
                f"{where} must be a dict with 'column', 'transform' and optionally 'name', "
                f"got {entry!r}"
            )
        column = entry.get("column")
        if not isinstance(column, str) or not column:
            raise ConfigError(f"{where}['column'] must name a column of the rows")
        transform = entry.get("transform", "identity")
        matched = _TRANSFORM.match(transform) if isinstance(transform, str) else None
        if matched is None or any(g is not None and int(g) < 1 for g in matched.groups()[1:]):
            raise ConfigError(
                f"{where}['transform'] must be one of identity, year, month, day, hour, void, "
                f"bucket[N] or truncate[N] (N >= 1), got {transform!r}"
            )
        if (
            transform not in ("identity", "void")
            and importlib.util.find_spec("pyiceberg_core") is None
        ):
            raise ConfigError(
                f"{where}['transform'] {transform!r}: pyiceberg writes such partitions only with "
                "pyiceberg-core installed (pip install 'pyiceberg[pyiceberg-core]'); without "
                "it, use 'identity'"
            )
        name = entry.get("name")
        if name is not None and (not isinstance(name, str) or not name):
            raise ConfigError(f"{where}['name'] must be a non-empty string")
        fields.append(PartitionField(column, transform, name))
    return tuple(fields)


def _table_properties(config: Mapping[str, Any]) -> dict[str, str]:
    given = config.get("table_properties", {})
    if not isinstance(given, Mapping):
        raise ConfigError(
            f"{WHERE}['table_properties'] must be a dict of Iceberg table properties, e.g. "
            "{'write.target-file-size-bytes': '134217728'}"
        )
    properties: dict[str, str] = {}
    for key, value in given.items():
        if not isinstance(key, str) or not isinstance(value, str | int | float | bool):
            raise ConfigError(
                f"{WHERE}['table_properties'] maps property names to strings, got "
                f"{key!r}: {type(value).__name__}"
            )
        if key.startswith("amp."):
            raise ConfigError(
                f"{WHERE}['table_properties'][{key!r}]: properties starting 'amp.' hold amp's "
                "delivery state and cannot be set"
            )
        text = str(value).lower() if isinstance(value, bool) else str(value)
        properties[key] = text
    return properties


def settings(config: Mapping[str, Any]) -> IcebergSettings:
    """``config`` checked (ConfigError naming the key and the fix otherwise)."""
    catalog_name = config.get("catalog_name", "amp")
    typed(WHERE, "catalog_name", catalog_name, str)
    if not catalog_name:
        raise ConfigError(f"{WHERE}['catalog_name'] must not be empty")
    mode = config.get("timestamp_ns", "exact")
    if mode not in TIMESTAMP_NS_MODES:
        raise ConfigError(
            f"{WHERE}['timestamp_ns'] must be 'exact' (nanosecond timestamps stored as "
            "microseconds, refusing a value with sub-microsecond digits) or 'truncate' "
            f"(drop those digits), got {mode!r}"
        )
    retries = config.get("commit_retries", DEFAULT_COMMIT_RETRIES)
    typed(WHERE, "commit_retries", retries, int)
    number_at_least(WHERE, "commit_retries", retries, 0)
    max_snapshots = config.get("max_snapshots", DEFAULT_MAX_SNAPSHOTS)
    typed(WHERE, "max_snapshots", max_snapshots, int)
    if max_snapshots != 0 and max_snapshots < 10:
        raise ConfigError(
            f"{WHERE}['max_snapshots'] must be 0 (never expire snapshots) or at least 10 (a "
            f"unit's commit adds up to 3), got {max_snapshots!r}"
        )
    return IcebergSettings(
        catalog_name,
        _catalog(config),
        _namespace(config),
        _partition_spec(config),
        _table_properties(config),
        mode,
        retries,
        max_snapshots,
    )


def table_identifier(namespace: tuple[str, ...], table: str) -> tuple[str, ...]:
    """The Iceberg identifier of amp table ``table``: in ``namespace`` unless the name
    itself is qualified (``lake.raw.logs`` → namespace ``lake.raw``, table ``logs``)."""
    if not table or any(not part for part in table.split(".")):
        raise ConfigError(f"an Iceberg table name has no empty part, got {table!r}")
    parts = tuple(table.split("."))
    return parts if len(parts) > 1 else (*namespace, table)
