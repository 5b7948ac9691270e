"""Environment variables that stand in for the ``amp`` command's common flags.

Why: a service runs the same command with the same server, token and destination
everywhere; its unit file or container sets them once. A flag given on the command line
always wins over the environment; an empty variable counts as not set.

=================  ===========================================================
``AMP_SERVER``     ``--server`` of every command that takes one
``AMP_AUTH_TOKEN`` the bearer token, when ``--auth-token`` is not given (read by
                   the Flight transport itself, so the Python API honours it too)
``AMP_TO``         ``--to`` of ``amp load``
``AMP_LOG_FORMAT`` ``--log-format`` (``text`` or ``json``)
=================  ===========================================================
"""

from __future__ import annotations

import argparse
import os

SERVER = "AMP_SERVER"
AUTH_TOKEN = "AMP_AUTH_TOKEN"
TO = "AMP_TO"
LOG_FORMAT = "AMP_LOG_FORMAT"


def from_env(name: str) -> str | None:
    """The variable's value; None when it is unset or empty."""
    return os.environ.get(name) or None


def add_env_argument(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    flag: str,
    variable: str,
    help: str,
    required: bool = True,
) -> None:
    """``flag``, required unless ``variable`` is set, whose value is then its default;
    ``required=False``: the command checks it itself (``amp load --config`` needs none)."""
    value = from_env(variable)
    parser.add_argument(
        flag,
        default=value,
        required=required and value is None,
        help=f"{help} (default: ${variable})",
    )


def add_server_argument(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """``--server``, as every command that talks to an Amp server takes it."""
    add_env_argument(
        parser, "--server", SERVER, "Amp server URL, e.g. grpc://localhost:1602", required
    )


def add_to_argument(
    parser: argparse.ArgumentParser, what: str | None = None, required: bool = True
) -> None:
    """``--to``, the destination URL, as every command that reads or writes one takes it
    (``what``: the destinations it accepts, when not all)."""
    add_env_argument(
        parser,
        "--to",
        TO,
        what
        or "destination: postgresql://user@host:port/db, duckdb:///file.db, "
        "redis://host:port/db or kafka://host:port/topic",
        required=required,
    )


def add_auth_token_argument(parser: argparse.ArgumentParser) -> None:
    """``--auth-token``; left None when not given, so that the transport reads
    ``AMP_AUTH_TOKEN`` itself (and a Dask task reads its own worker's)."""
    parser.add_argument("--auth-token", default=None, help=f"bearer token (default: ${AUTH_TOKEN})")
