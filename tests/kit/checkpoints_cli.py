"""``amp checkpoints list|reset`` against a destination a real load just wrote: the
cycle each destination's suite runs (list, dry-run reset, reset, reload from block 0).

The command runs in this process (``amp.cli.main``) with its output captured, so a
failure shows the command's own words.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from amp.cli import main
from amp.devserver import DevServer
from amp.streaming.types import hex_hash
from kit.driving import load_to_head


def run_amp(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """``amp *args`` in this process: its exit code and its stdout (stderr is
    appended, so a failing assertion shows it)."""
    capsys.readouterr()
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def listed(capsys: pytest.CaptureFixture[str], url: str, table: str, connection: str) -> Any:
    code, out = run_amp(
        capsys,
        "checkpoints",
        "list",
        "--to",
        url,
        "--table",
        table,
        "--connection",
        connection,
        "--format",
        "json",
    )
    assert code == 0, out
    return json.loads(out)


def run_cycle(
    capsys: pytest.CaptureFixture[str],
    server: DevServer,
    loader: str,
    config: Mapping[str, Any],
    url: str,
    table: str,
    connection: str,
    assert_exact: Callable[[], object],
) -> None:
    """Load to the head with checkpoints and idempotency; the checkpoint is listed as
    it is; a reset without --yes deletes nothing, with --yes deletes it all; the next
    load starts again at block 0 and the destination equals the chain."""
    config = {**config, "checkpoint": {"enabled": True}, "idempotency": {"enabled": True}}
    first = load_to_head(server, connection, loader, config, table)
    chain = server.chain
    head = chain.head
    head_hash = hex_hash(chain.canonical_hash(head))
    last_start = first.ranges()[-1][0]
    assert_exact()

    rows = listed(capsys, url, table, connection)
    assert [(r["kind"], r["connection"], r["table"], r["worker"]) for r in rows] == [
        ("checkpoint", connection, table, 0)
    ], rows
    row = rows[0]
    assert row["network"] == "mainnet" and row["is_reorg"] is False, row
    assert row["range"] == {"start": last_start, "end": head, "hash": head_hash}, row
    assert isinstance(row["age_seconds"], float) and row["age_seconds"] >= 0, row

    code, out = run_amp(capsys, "checkpoints", "list", "--to", url, "--table", table)
    assert code == 0, out
    lines = [line for line in out.splitlines() if line.startswith(connection)]
    assert len(lines) == 1 and f" {last_start}..{head} (0x" in lines[0], out

    ranges = len(first.loads())
    reset = ("checkpoints", "reset", "--to", url, "--table", table, "--connection", connection)
    code, out = run_amp(capsys, *reset)
    assert code == 0, out
    expected = (
        f"connection {connection!r}, table {table!r}: 1 checkpoint(s) (workers 0), "
        f"{ranges} processed range(s), 0 parallel plan(s)"
    )
    assert expected in out and "nothing deleted" in out, out
    assert len(listed(capsys, url, table, connection)) == 1, "a reset without --yes deleted"

    code, out = run_amp(capsys, *reset, "--yes")
    assert code == 0, out
    assert f"deleted: {expected}" in out, out
    assert listed(capsys, url, table, connection) == []
    code, out = run_amp(capsys, *reset)
    assert code == 0 and "nothing to reset" in out, out

    again = load_to_head(server, connection, loader, config, table)
    assert again.ranges()[0][0] == 0, f"the load after a reset resumed: {again.ranges()}"
    assert_exact()
    rows = listed(capsys, url, table, connection)
    assert [(r["worker"], r["range"]["end"]) for r in rows] == [(0, head)], rows
