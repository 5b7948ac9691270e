"""``amp load --config FILE`` (issue 12): the file is checked before anything runs, with
errors naming the ``[[load]]`` and the close key; ``${VAR}`` secrets never reach any
output; every ``amp load`` flag has a key, documented in the README. The two-load run
(PostgreSQL and Redis, Ctrl-C, resume) is tests/redis/test_redis_config_file.py."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from amp.cli import build_parser
from amp.cli_config import FLAG_KEYS, interpolate, read_config
from amp.devserver import DevServer
from amp.errors import ConfigError
from ampcli import run_amp
from kit import PG_HOST, PG_PORT
from kit.services import PG_USER

pytestmark = pytest.mark.timeout(120)

README = Path(__file__).resolve().parents[2] / "README.md"
QUERY = "SELECT * FROM eth_firehose.blocks"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "amp.toml"
    path.write_text(text)
    return path


def _two_loads(second_extra: str) -> str:
    return (
        'server = "grpc://127.0.0.1:1"\n'
        f'[[load]]\nquery = "{QUERY}"\nto = "duckdb:///a.db"\ntable = "first"\n'
        f'[[load]]\nquery = "{QUERY}"\nto = "duckdb:///b.db"\ntable = "second"\n'
        f"{second_extra}"
    )


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ("tabel = 'x'\n", "did you mean 'table'?"),
        ("[load.parallel]\nnum_worker = 2\n", "did you mean 'num_workers'?"),
        ("[load.parallel]\nnum_workers = 'two'\n", "['num_workers'] must be int"),
        ("stream = 'yes'\n", "['stream'] must be bool"),
        ("mode = 'replace'\n", "mode must be 'append' or 'overwrite'"),
        ("[load.options]\ndatabse = 'x'\n", "did you mean 'database'?"),
    ],
    ids=["key", "parallel-key", "parallel-type", "type", "mode", "option-key"],
)
def test_a_bad_load_is_named_before_anything_runs(tmp_path: Path, extra: str, words: str) -> None:
    """The server is unreachable: an error that came from running would be a retry, not
    this exit 2 naming the second load."""
    result = run_amp("load", "--config", str(_write(tmp_path, _two_loads(extra))))
    assert result.returncode == 2, result.stderr
    assert "[[load]] 1 (table 'second')" in result.stderr
    assert words in result.stderr
    assert "Retry" not in result.stderr


def test_unknown_top_level_key_names_the_close_one(tmp_path: Path) -> None:
    path = _write(tmp_path, _two_loads("").replace("server =", "sever =", 1))
    with pytest.raises(ConfigError, match="did you mean 'server'"):
        read_config(path)


def test_a_missing_variable_names_it_and_the_key(tmp_path: Path) -> None:
    extra = 'connection_name = "${AMP_TEST_SURELY_UNSET}"\n'
    result = run_amp(
        "load",
        "--config",
        str(_write(tmp_path, _two_loads(extra))),
        env={"AMP_TEST_SURELY_UNSET": ""},
    )
    assert result.returncode == 2, result.stderr
    assert "${AMP_TEST_SURELY_UNSET}" in result.stderr
    assert "[[load]] 1 (table 'second').connection_name" in result.stderr


def test_dollar_dollar_brace_is_a_literal() -> None:
    assert interpolate("k", "a$${B}c") == "a${B}c"
    with pytest.raises(ConfigError, match="not a variable name"):
        interpolate("k", "${not a name}")


def test_interpolated_secret_never_printed(tmp_path: Path) -> None:
    """The secret is the database name here: no rule would hide a database name in the
    'loading into' line or PostgreSQL's "database ... does not exist" error, only its
    coming from ${VAR} does."""
    secret = "cfgsecretdb7f3a"
    with DevServer(port=0, seed=1, initial_blocks=5) as server:
        text = (
            f'server = "{server.url}"\nno_progress = true\n[[load]]\nquery = "{QUERY}"\n'
            f'to = "postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/${{AMP_TEST_DB}}"\n'
            'table = "t"\n[load.options]\nresilience = {retry = {max_retries = 0}}\n'
        )
        result = run_amp(
            "load", "--config", str(_write(tmp_path, text)), env={"AMP_TEST_DB": secret}
        )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "loading into postgresql://127.0.0.1:5432/***" in output
    assert secret not in output


def test_config_with_a_per_load_flag_is_refused(tmp_path: Path) -> None:
    result = run_amp("load", "--config", str(_write(tmp_path, _two_loads(""))), "--query", QUERY)
    assert result.returncode == 2
    assert "--query cannot be given with it" in result.stderr


def test_every_load_flag_has_a_documented_key() -> None:
    parser = build_parser()
    subparsers = next(
        action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
    )
    load = subparsers.choices["load"]
    flags = {
        max(action.option_strings, key=len)
        for action in load._actions
        if action.option_strings and action.dest not in ("help", "config")
    }
    flags |= {"--log-format", "--verbose"}  # amp's own flags, set per process
    assert flags == set(FLAG_KEYS)
    readme = README.read_text()
    for flag, (key, where) in FLAG_KEYS.items():
        assert f"| `{flag}` | `{key}` | {where} |" in readme, flag
