"""``--to`` destination URLs → (loader name, loader config), every part validated.

Why strict: a part that is not understood must not be dropped on the floor. ``redis://
host:6379/seven`` once loaded into db 0; each error names the part and shows an example.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from typing import Any

from amp.errors import ConfigError
from amp.redact import redact_url, strip_userinfo

EXAMPLES = {
    "postgresql": "postgresql://user@localhost:5432/mydb",
    "duckdb": "duckdb:///path/to/file.db",
    "redis": "redis://localhost:6379/0",
    "kafka": "kafka://localhost:9092/mytopic",
    "deltalake": "deltalake:///abs/path/to/tables",
    "iceberg": "iceberg:///data/lake (or iceberg+postgresql://user@host:5432/db?warehouse=/data/wh)",
}
# deltalake+<store>://bucket/prefix: Delta tables in an object store (storage_options
# come from the connection config, never the URL).
_DELTA_STORES = frozenset({"s3", "s3a", "gs", "az", "abfs", "abfss", "file"})
# libpq connection parameters a postgresql:// URL may carry as ?key=value.
_POSTGRESQL_PARAMS = frozenset(
    {
        "sslmode",
        "sslrootcert",
        "sslcert",
        "sslkey",
        "connect_timeout",
        "application_name",
        "options",
        "target_session_attrs",
        "gssencmode",
        "channel_binding",
        "keepalives",
        "keepalives_idle",
    }
)
# Kafka security settings a kafka:// URL may carry as ?key=value (producer_config keys).
_KAFKA_PARAMS = frozenset({"security.protocol", "sasl.mechanism"})
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
# Loader keys an iceberg:// URL may set as ?key=value.
_ICEBERG_PARAMS = frozenset({"namespace", "catalog_name"})


def _fail(url: str, scheme: str, problem: str) -> ConfigError:
    return ConfigError(f"--to {redact_url(url)}: {problem}; e.g. {EXAMPLES[scheme]}")


def _check_port(url: str, scheme: str, hostport: str) -> None:
    host, colon, port = hostport.rpartition(":") if ":" in hostport else (hostport, "", "")
    if colon and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise _fail(url, scheme, f"the port {port!r} must be a number from 1 to 65535")
    if not host:
        raise _fail(url, scheme, "the host is missing")


def _query_params(url: str, scheme: str, query: str, allowed: frozenset[str]) -> dict[str, str]:
    try:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise _fail(url, scheme, f"the query string {query!r} is not key=value pairs") from None
    for key, _ in pairs:
        if key not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise _fail(url, scheme, f"unknown URL parameter {key!r} (known: {known})")
    return dict(pairs)


def _single_path_part(url: str, scheme: str, path: str, what: str) -> str:
    part = path[1:] if path.startswith("/") else path
    if "/" in part:
        raise _fail(url, scheme, f"the path {path!r} must be one {what}")
    return urllib.parse.unquote(part)


def destination_from_url(url: str) -> tuple[str, dict[str, Any]]:
    """A destination URL → (loader, config): ``postgresql://user:pass@host:port/db``,
    ``duckdb:///path.db``, ``redis://host:port/db``, ``kafka://host:port/topic``,
    ``deltalake:///abs/path`` (``deltalake+s3://bucket/prefix``), ``iceberg:///dir`` or
    ``iceberg+postgresql://user@host:port/db?warehouse=/path``."""
    parsed = urllib.parse.urlsplit(url)
    scheme = parsed.scheme.lower()
    if parsed.fragment:
        raise ConfigError(f"--to {redact_url(url)}: a destination URL has no #fragment")
    if scheme in ("postgresql", "postgres"):
        _check_port(url, "postgresql", parsed.netloc.rpartition("@")[2] or "localhost")
        _single_path_part(url, "postgresql", parsed.path, "database name")
        _query_params(url, "postgresql", parsed.query, _POSTGRESQL_PARAMS)
        return "postgresql", {"dsn": url}
    if scheme == "duckdb":
        # duckdb:///abs/path.db, duckdb://relative.db, duckdb:///:memory:
        if parsed.query:
            raise _fail(url, "duckdb", f"unknown URL parameters {parsed.query!r}")
        path = url.split("://", 1)[1]
        path = path[1:] if path.startswith("//") or path == "/:memory:" else path
        return "duckdb", {"database": urllib.parse.unquote(path) or ":memory:"}
    if scheme in ("redis", "rediss"):
        _check_port(url, "redis", parsed.netloc.rpartition("@")[2])
        db = _single_path_part(url, "redis", parsed.path, "database number")
        if db and not db.isdigit():
            raise _fail(url, "redis", f"the database {db!r} must be a number (0, 1, ...)")
        _query_params(url, "redis", parsed.query, frozenset())
        return "redis", {"url": url}
    if scheme == "kafka":
        bare, user, password = strip_userinfo(url)
        servers = urllib.parse.urlsplit(bare).netloc
        for server in servers.split(","):
            _check_port(url, "kafka", server)
        topic = _single_path_part(url, "kafka", parsed.path, "topic name")
        if not topic:
            raise _fail(url, "kafka", "the topic is missing")
        if not _TOPIC.match(topic):
            raise _fail(url, "kafka", f"the topic {topic!r} may hold only A-Z a-z 0-9 . _ -")
        producer_config = _query_params(url, "kafka", parsed.query, _KAFKA_PARAMS)
        if user is not None:
            # Credentials in the URL are SASL's: PLAIN over plaintext unless the URL says.
            producer_config = {
                "security.protocol": "SASL_PLAINTEXT",
                "sasl.mechanism": "PLAIN",
                **producer_config,
                "sasl.username": user,
                "sasl.password": password or "",
            }
        config: dict[str, Any] = {"bootstrap_servers": servers, "topic": topic}
        if producer_config:
            config["producer_config"] = producer_config
        return "kafka", config
    if scheme == "deltalake" or scheme.startswith("deltalake+"):
        return "deltalake", {"table_path": _delta_path(url, scheme, parsed)}
    if scheme in ("iceberg", "iceberg+postgresql"):
        return "iceberg", _iceberg(url, parsed)
    raise ConfigError(
        f"unsupported destination URL {redact_url(url)!r}; use {', '.join(EXAMPLES.values())}"
    )


def _delta_path(url: str, scheme: str, parsed: urllib.parse.SplitResult) -> str:
    """``deltalake:///abs/path`` → ``/abs/path``; ``deltalake+s3://bucket/prefix`` →
    ``s3://bucket/prefix``: the directory under which table ``t`` is ``<path>/t``."""
    if parsed.query:
        raise _fail(url, "deltalake", f"unknown URL parameters {parsed.query!r}")
    store = scheme.partition("+")[2]
    if store:
        if store not in _DELTA_STORES:
            known = ", ".join(sorted(_DELTA_STORES))
            raise _fail(url, "deltalake", f"unknown object store {store!r} (known: {known})")
        if not parsed.netloc:
            raise _fail(url, "deltalake", "the bucket is missing")
        return f"{store}://{parsed.netloc}{parsed.path}"
    if parsed.netloc:
        raise _fail(
            url, "deltalake", f"{parsed.netloc!r} is not a path: write deltalake:///abs/path"
        )
    path = urllib.parse.unquote(parsed.path)
    if not path.startswith("/") or path == "/":
        raise _fail(url, "deltalake", "give an absolute directory, deltalake:///abs/path")
    return path


def _iceberg(url: str, parsed: urllib.parse.SplitResult) -> dict[str, Any]:
    """``iceberg:///dir``: a SQL catalog on SQLite at ``dir/catalog.db`` whose tables'
    files go under ``dir/warehouse`` (``iceberg://rel/dir``: relative to the working
    directory). ``iceberg+postgresql://user@host:port/db?warehouse=/path``: a SQL
    catalog in that PostgreSQL database (driver psycopg), files under ``warehouse`` (a
    path or a ``file://``/``s3://`` URI). Both take ``?namespace=`` and ``?catalog_name=``."""
    if parsed.scheme.lower() == "iceberg":
        params = _query_params(url, "iceberg", parsed.query, _ICEBERG_PARAMS)
        if parsed.netloc and "@" in parsed.netloc:
            raise _fail(url, "iceberg", "an iceberg:// URL is a directory; it has no user")
        path = urllib.parse.unquote(parsed.netloc + parsed.path)
        if not path:
            raise _fail(url, "iceberg", "the directory is missing")
        directory = os.path.abspath(path)
        catalog = {
            "type": "sql",
            "uri": f"sqlite:///{directory}/catalog.db",
            "warehouse": f"file://{directory}/warehouse",
        }
    else:
        params = _query_params(
            url, "iceberg", parsed.query, _ICEBERG_PARAMS | frozenset({"warehouse"})
        )
        _check_port(url, "iceberg", parsed.netloc.rpartition("@")[2] or "localhost")
        if not _single_path_part(url, "iceberg", parsed.path, "database name"):
            raise _fail(url, "iceberg", "the catalog's database is missing")
        warehouse = params.pop("warehouse", "")
        if not warehouse:
            raise _fail(url, "iceberg", "?warehouse= (where table files go) is missing")
        if "://" not in warehouse:
            warehouse = f"file://{os.path.abspath(warehouse)}"
        bare = urllib.parse.urlunsplit(parsed._replace(scheme="postgresql+psycopg", query=""))
        catalog = {"type": "sql", "uri": bare, "warehouse": warehouse}
    return {"catalog_config": catalog, **params}
