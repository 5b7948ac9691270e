"""The simulated chain's data: determinism, hash chaining, reorgs, and the values that stress
loaders (protocol §6), checked on what a bare Flight client receives."""

from __future__ import annotations

import itertools

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from flightclient import assert_same_rows, connect, messages_table, rows_of_blocks, run_batch

from amp.devserver import DevServer
from amp.devserver.chain import SimulatedChain
from amp.devserver.datagen import TABLE_SCHEMAS

TABLES = sorted(TABLE_SCHEMAS)


@pytest.fixture(scope="module")
def received() -> dict[str, pa.Table]:
    """Every table of a seed-1, 100-block chain as received over Flight."""
    with DevServer(port=0, seed=1, initial_blocks=100) as srv, connect(srv.url) as client:
        tables = {}
        for name in TABLES:
            schema, messages = run_batch(client, f"SELECT * FROM eth_firehose.{name}")
            tables[name] = messages_table(schema, messages)
        return tables


# -- determinism -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TABLES)
def test_same_seed_same_rows(name: str) -> None:
    first = SimulatedChain(seed=7, initial_blocks=40).canonical_table(name)
    second = SimulatedChain(seed=7, initial_blocks=40).canonical_table(name)
    assert first.num_rows > 0
    assert first.equals(second)


@pytest.mark.parametrize("name", TABLES)
def test_different_seed_different_rows(name: str) -> None:
    first = SimulatedChain(seed=7, initial_blocks=40).canonical_table(name)
    second = SimulatedChain(seed=8, initial_blocks=40).canonical_table(name)
    assert not first.equals(second)


def test_same_seed_same_rows_through_reorgs_and_mining() -> None:
    def history() -> SimulatedChain:
        chain = SimulatedChain(seed=3, initial_blocks=30)
        chain.mine(5)
        chain.reorg(4)
        chain.mine(2)
        chain.reorg(1)
        return chain

    first, second = history(), history()
    for name in TABLES:
        assert first.canonical_table(name).equals(second.canonical_table(name))


def test_a_longer_chain_extends_a_shorter_one() -> None:
    short = SimulatedChain(seed=4, initial_blocks=20)
    grown = SimulatedChain(seed=4, initial_blocks=10)
    grown.mine(10)
    long = SimulatedChain(seed=4, initial_blocks=35)
    for name in TABLES:
        assert short.canonical_table(name).equals(grown.canonical_table(name))
        assert rows_of_blocks(long.canonical_table(name), 0, 19).equals(short.canonical_table(name))


def test_canonical_table_matches_what_the_server_sends(received: dict[str, pa.Table]) -> None:
    chain = SimulatedChain(seed=1, initial_blocks=100)
    for name in TABLES:
        assert_same_rows(received[name], chain.canonical_table(name), name)


# -- hash chaining -----------------------------------------------------------------------------


def test_blocks_are_hash_chained(received: dict[str, pa.Table]) -> None:
    blocks = received["blocks"].sort_by("block_num").to_pylist()
    assert [row["block_num"] for row in blocks] == list(range(100))
    assert blocks[0]["parent_hash"] == b"\x00" * 32
    for parent, child in itertools.pairwise(blocks):
        assert child["parent_hash"] == parent["hash"]
    assert len({row["hash"] for row in blocks}) == 100


def test_rows_carry_their_block_hash_number_and_timestamp(received: dict[str, pa.Table]) -> None:
    blocks = {row["block_num"]: row for row in received["blocks"].to_pylist()}
    for name in ("transactions", "logs"):
        for row in received[name].to_pylist():
            block = blocks[row["block_num"]]
            assert row["_block_num"] == row["block_num"]
            assert row["block_hash"] == block["hash"]
            assert row["timestamp"] == block["timestamp"]


def test_logs_belong_to_transactions_of_their_block(received: dict[str, pa.Table]) -> None:
    transactions = {row["tx_hash"]: row for row in received["transactions"].to_pylist()}
    assert len(transactions) == received["transactions"].num_rows  # unique tx hashes
    for log in received["logs"].to_pylist():
        tx = transactions[log["tx_hash"]]
        assert (tx["block_num"], tx["tx_index"]) == (log["block_num"], log["tx_index"])


def test_chain_starting_at_15_million_is_chained_to_a_parent() -> None:
    chain = SimulatedChain(seed=2, start_block=15_000_000, initial_blocks=5)
    blocks = chain.canonical_table("blocks").sort_by("block_num").to_pylist()
    assert blocks[0]["block_num"] == 15_000_000
    assert blocks[0]["parent_hash"] == chain.canonical_hash(14_999_999)
    assert blocks[0]["parent_hash"] != b"\x00" * 32
    for parent, child in itertools.pairwise(blocks):
        assert child["parent_hash"] == parent["hash"]


# -- reorgs ------------------------------------------------------------------------------------


def test_reorg_keeps_the_length_and_replaces_exactly_the_last_blocks() -> None:
    chain = SimulatedChain(seed=1, initial_blocks=50)
    before = {name: chain.canonical_table(name) for name in TABLES}
    hashes_before = [chain.canonical_hash(n) for n in range(50)]
    event = chain.reorg(4)
    assert (event.fork_height, event.depth, event.old_head) == (46, 4, 49)
    assert chain.head == 49
    hashes_after = [chain.canonical_hash(n) for n in range(50)]
    assert hashes_after[:46] == hashes_before[:46]
    assert all(a != b for a, b in zip(hashes_after[46:], hashes_before[46:], strict=True))
    blocks = chain.canonical_table("blocks").sort_by("block_num").to_pylist()
    assert blocks[46]["parent_hash"] == hashes_after[45]
    for parent, child in itertools.pairwise(blocks):
        assert child["parent_hash"] == parent["hash"]
    for name in TABLES:
        after = chain.canonical_table(name)
        assert rows_of_blocks(after, 0, 45).equals(rows_of_blocks(before[name], 0, 45))
    # the replaced blocks' rows differ (their transactions are new ones)
    old_tx = set(rows_of_blocks(before["transactions"], 46, 49)["tx_hash"].to_pylist())
    new_tx = set(
        rows_of_blocks(chain.canonical_table("transactions"), 46, 49)["tx_hash"].to_pylist()
    )
    assert new_tx and old_tx and not old_tx & new_tx
    assert not rows_of_blocks(chain.canonical_table("blocks"), 46, 49).equals(
        rows_of_blocks(before["blocks"], 46, 49)
    )


def test_reorged_blocks_are_classified_forked_and_walk_back_to_the_ancestor() -> None:
    chain = SimulatedChain(seed=1, initial_blocks=50)
    old = chain.canonical_hash(48)
    chain.reorg(4)
    assert chain.classify(48, old) == "forked"
    assert chain.classify(48, chain.canonical_hash(48)) == "canonical"
    assert chain.classify(48, b"\x01" * 32) == "unknown"
    assert chain.common_ancestor(48, old) == 45
    assert chain.reorgs[-1].fork_height == 46


def test_reorg_depth_is_validated() -> None:
    chain = SimulatedChain(seed=1, initial_blocks=5)
    with pytest.raises(ValueError):
        chain.reorg(0)
    with pytest.raises(ValueError):
        chain.reorg(6)
    chain.reorg(5)  # the whole chain
    assert chain.head == 4


# -- values that stress loaders ----------------------------------------------------------------


def test_decimal_amounts_reach_the_top_of_decimal128(received: dict[str, pa.Table]) -> None:
    amounts = [
        value
        for name in ("blocks", "transactions")
        for column in received[name].schema
        if column.type == pa.decimal128(38, 0)
        for value in received[name][column.name].to_pylist()
        if value is not None
    ]
    assert amounts
    assert any(value >= 10**37 for value in amounts)
    assert all(0 <= value < 10**38 for value in amounts)


def test_value_strings_have_78_digits(received: dict[str, pa.Table]) -> None:
    values = [v for v in received["transactions"]["value"].to_pylist() if v is not None]
    assert any(len(value) == 78 and value.isdigit() for value in values)
    assert all(value.isdigit() and int(value) < 2**256 for value in values)
    assert "0" in values


def test_nul_bytes_inside_binaries_and_strings(received: dict[str, pa.Table]) -> None:
    data = received["logs"]["data"].to_pylist()
    assert any(b"\x00" in value[1:-1] for value in data)
    reasons = [r for r in received["transactions"]["revert_reason"].to_pylist() if r is not None]
    assert any("\x00" in reason[1:-1] for reason in reasons)


def test_empty_binaries(received: dict[str, pa.Table]) -> None:
    assert b"" in received["logs"]["data"].to_pylist()
    assert b"" in received["transactions"]["input"].to_pylist()
    assert b"" in received["blocks"]["extra_data"].to_pylist()


@pytest.mark.parametrize("name", TABLES)
def test_every_nullable_column_has_nulls_and_no_other_column_does(
    received: dict[str, pa.Table], name: str
) -> None:
    table = received[name]
    nullable = [column.name for column in TABLE_SCHEMAS[name] if column.nullable]
    assert nullable
    for column in TABLE_SCHEMAS[name]:
        nulls = table[column.name].null_count
        if column.nullable:
            assert 0 < nulls < table.num_rows, column.name
        else:
            assert nulls == 0, column.name


def test_log_index_near_the_top_of_uint32(received: dict[str, pa.Table]) -> None:
    log_index = received["logs"]["log_index"]
    assert pc.max(log_index).as_py() >= 2**32 - 100
    assert pc.max(log_index).as_py() <= 2**32 - 1
    # still unique within a block
    pairs = list(zip(received["logs"]["block_num"].to_pylist(), log_index.to_pylist(), strict=True))
    assert len(set(pairs)) == len(pairs)


def test_empty_blocks_exist(received: dict[str, pa.Table]) -> None:
    with_transactions = set(received["transactions"]["block_num"].to_pylist())
    empty = set(range(100)) - with_transactions
    assert empty
    assert not empty & set(received["logs"]["block_num"].to_pylist())


def test_types_follow_the_protocol(received: dict[str, pa.Table]) -> None:
    """Protocol §6: hashes FixedSizeBinary(32), addresses (20), amounts Decimal128(38, 0),
    timestamps ns in +00:00, block numbers UInt64, log_index UInt32."""
    blocks, transactions, logs = received["blocks"], received["transactions"], received["logs"]
    for table in (blocks, transactions, logs):
        assert table.schema.field("_block_num").type == pa.uint64()
        assert table.schema.field("block_num").type == pa.uint64()
        assert table.schema.field("timestamp").type == pa.timestamp("ns", tz="+00:00")
    assert blocks.schema.field("hash").type == pa.binary(32)
    assert blocks.schema.field("miner").type == pa.binary(20)
    assert blocks.schema.field("difficulty").type == pa.decimal128(38, 0)
    assert transactions.schema.field("to").type == pa.binary(20)
    assert transactions.schema.field("value").type == pa.utf8()
    assert logs.schema.field("log_index").type == pa.uint32()
    assert logs.schema.field("topic3").type == pa.binary(32)
