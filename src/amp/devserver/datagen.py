"""Deterministic EVM-like table rows for the simulated chain.

Why counter-based: every value is a pure function of ``(seed, block number, fork
generation, row position, column)``, computed with a vectorised splitmix64 over whole
block ranges. So any range of blocks can be (re)generated on demand, in one numpy pass,
without keeping the chain's rows in memory: a dev server with millions of historical
blocks costs nothing until they are queried, and serving a microbatch needs memory for
that microbatch only. A reorg's replacement blocks differ because their generation does.

The columns and Arrow types follow protocol §6, plus values that stress loaders:
Decimal128(38, 0) amounts at the type's maximum, 78-digit uint256 strings, NUL bytes
inside binaries and strings, empty binaries, nulls in every nullable column and a
``log_index`` near 2**32 now and then.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

HASH = pa.binary(32)
ADDRESS = pa.binary(20)
AMOUNT = pa.decimal128(38, 0)
TIMESTAMP = pa.timestamp("ns", tz="+00:00")

GENESIS_UNIX_SECONDS = 1_600_000_000
SECONDS_PER_BLOCK = 12

BLOCKS_SCHEMA = pa.schema(
    [
        pa.field("_block_num", pa.uint64(), nullable=False),
        pa.field("block_num", pa.uint64(), nullable=False),
        pa.field("timestamp", TIMESTAMP, nullable=False),
        pa.field("hash", HASH, nullable=False),
        pa.field("parent_hash", HASH, nullable=False),
        pa.field("ommers_hash", HASH, nullable=False),
        pa.field("miner", ADDRESS, nullable=False),
        pa.field("state_root", HASH, nullable=False),
        pa.field("transactions_root", HASH, nullable=False),
        pa.field("receipt_root", HASH, nullable=False),
        pa.field("logs_bloom", pa.binary(), nullable=False),
        pa.field("difficulty", AMOUNT, nullable=False),
        pa.field("total_difficulty", AMOUNT, nullable=True),
        pa.field("gas_limit", pa.uint64(), nullable=False),
        pa.field("gas_used", pa.uint64(), nullable=False),
        pa.field("extra_data", pa.binary(), nullable=False),
        pa.field("mix_hash", HASH, nullable=False),
        pa.field("nonce", pa.uint64(), nullable=False),
        pa.field("base_fee_per_gas", AMOUNT, nullable=True),
    ]
)

TRANSACTIONS_SCHEMA = pa.schema(
    [
        pa.field("_block_num", pa.uint64(), nullable=False),
        pa.field("block_hash", HASH, nullable=False),
        pa.field("block_num", pa.uint64(), nullable=False),
        pa.field("timestamp", TIMESTAMP, nullable=False),
        pa.field("tx_index", pa.uint32(), nullable=False),
        pa.field("tx_hash", HASH, nullable=False),
        pa.field("to", ADDRESS, nullable=True),
        pa.field("nonce", pa.uint64(), nullable=False),
        pa.field("gas_price", AMOUNT, nullable=True),
        pa.field("gas_limit", pa.uint64(), nullable=False),
        pa.field("value", pa.utf8(), nullable=True),
        pa.field("input", pa.binary(), nullable=False),
        pa.field("v", pa.binary(), nullable=False),
        pa.field("r", pa.binary(), nullable=False),
        pa.field("s", pa.binary(), nullable=False),
        pa.field("gas_used", pa.uint64(), nullable=False),
        pa.field("type", pa.int32(), nullable=False),
        pa.field("max_fee_per_gas", AMOUNT, nullable=True),
        pa.field("max_priority_fee_per_gas", AMOUNT, nullable=True),
        pa.field("from", ADDRESS, nullable=False),
        pa.field("status", pa.int32(), nullable=False),
        pa.field("revert_reason", pa.utf8(), nullable=True),
    ]
)

LOGS_SCHEMA = pa.schema(
    [
        pa.field("_block_num", pa.uint64(), nullable=False),
        pa.field("block_hash", HASH, nullable=False),
        pa.field("block_num", pa.uint64(), nullable=False),
        pa.field("timestamp", TIMESTAMP, nullable=False),
        pa.field("tx_hash", HASH, nullable=False),
        pa.field("tx_index", pa.uint32(), nullable=False),
        pa.field("log_index", pa.uint32(), nullable=False),
        pa.field("address", ADDRESS, nullable=False),
        pa.field("topic0", HASH, nullable=True),
        pa.field("topic1", HASH, nullable=True),
        pa.field("topic2", HASH, nullable=True),
        pa.field("topic3", HASH, nullable=True),
        pa.field("data", pa.binary(), nullable=False),
    ]
)

TABLE_SCHEMAS: dict[str, pa.Schema] = {
    "blocks": BLOCKS_SCHEMA,
    "transactions": TRANSACTIONS_SCHEMA,
    "logs": LOGS_SCHEMA,
}

_U64 = np.uint64
_GOLDEN = _U64(0x9E3779B97F4A7C15)
_MIX1 = _U64(0xBF58476D1CE4E5B9)
_MIX2 = _U64(0x94D049BB133111EB)

# Field identifiers: each column draws its words from its own stream.
(
    _F_HASH,
    _F_TX_COUNT,
    _F_LOG_COUNT,
    _F_BLOCK_FIELDS,
    _F_TX_FIELDS,
    _F_LOG_FIELDS,
    _F_BYTES,
) = range(1, 8)


def _mix(values: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, elementwise on a uint64 array (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = values + _GOLDEN
        z = (z ^ (z >> _U64(30))) * _MIX1
        z = (z ^ (z >> _U64(27))) * _MIX2
        return z ^ (z >> _U64(31))


def _words(keys: np.ndarray, field: int, count: int) -> np.ndarray:
    """``count`` pseudo-random uint64 words per key for one field: shape (len(keys), count)."""
    with np.errstate(over="ignore"):
        offsets = (_U64(field) << _U64(32)) + np.arange(count, dtype=_U64) * _GOLDEN
        return _mix(keys[:, None] ^ offsets[None, :])


def _child_keys(parent_keys: np.ndarray, positions: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return _mix(parent_keys ^ ((positions.astype(_U64) + _U64(1)) * _MIX1))


def block_keys(seed: int, numbers: np.ndarray, generations: np.ndarray) -> np.ndarray:
    """The key of each block ``(number, generation)``: the root of all its values."""
    with np.errstate(over="ignore"):
        seed_key = _mix(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=_U64))[0]
        numbered = _mix(numbers.astype(_U64) ^ seed_key)
        return _mix(numbered ^ (generations.astype(_U64) * _MIX2))


def block_hashes(seed: int, numbers: np.ndarray, generations: np.ndarray) -> np.ndarray:
    """32-byte block hashes, as a (n, 4) uint64 array (view as bytes for the hash)."""
    return _words(block_keys(seed, numbers, generations), _F_HASH, 4)


def block_hash(seed: int, number: int, generation: int) -> bytes:
    hashes = block_hashes(seed, np.array([number], dtype=_U64), np.array([generation], dtype=_U64))
    return hashes.tobytes()


def _fixed(words: np.ndarray, width: int, valid: np.ndarray | None = None) -> pa.Array:
    """A FixedSizeBinary array from the first ``width`` bytes of each row of words."""
    rows = words.shape[0]
    raw = np.ascontiguousarray(words).view(np.uint8).reshape(rows, words.shape[1] * 8)[:, :width]
    data = pa.py_buffer(np.ascontiguousarray(raw).tobytes())
    return pa.Array.from_buffers(pa.binary(width), rows, [_validity(valid), data])


def _validity(valid: np.ndarray | None) -> pa.Buffer | None:
    if valid is None or bool(valid.all()):
        return None
    return pa.array(valid, pa.bool_()).buffers()[1]


def _uint(values: np.ndarray, arrow_type: pa.DataType) -> pa.Array:
    return pa.array(values, arrow_type)


def _decimal(words: np.ndarray, magnitude: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    """Decimal128(38, 0) amounts; ``magnitude`` 2 marks rows at the type's maximum range.

    magnitude 0: a realistic gwei-scale value (< 2**40); 1: a large value (< 2**63);
    2: up to 10**38 - 1, the largest a Decimal128(38, 0) holds.
    """
    rows = words.shape[0]
    low = words[:, 0].copy()
    high = np.zeros(rows, dtype=_U64)
    low[magnitude == 0] &= _U64((1 << 40) - 1)
    low[magnitude == 1] &= _U64((1 << 63) - 1)
    huge = magnitude == 2
    # high < 5 * 10**18 keeps high * 2**64 + low below 10**38.
    high[huge] = words[huge, 1] % _U64(5_000_000_000_000_000_000)
    buffer = np.empty((rows, 2), dtype=_U64)
    buffer[:, 0] = low
    buffer[:, 1] = high
    return pa.Array.from_buffers(AMOUNT, rows, [_validity(valid), pa.py_buffer(buffer.tobytes())])


def _binary(keys: np.ndarray, field: int, lengths: np.ndarray) -> pa.Array:
    """Variable-length binaries of the given lengths (zero allowed) filled from the keys."""
    rows = len(keys)
    offsets = np.zeros(rows + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    words_per_row = int(lengths.max() + 7) // 8 if rows else 0
    if words_per_row:
        content = _words(keys, field, words_per_row).view(np.uint8).reshape(rows, words_per_row * 8)
        mask = np.arange(words_per_row * 8)[None, :] < lengths[:, None]
        data = content[mask]
    else:
        data = np.zeros(0, dtype=np.uint8)
    assert data.size == total
    return pa.Array.from_buffers(
        pa.binary(), rows, [None, pa.py_buffer(offsets), pa.py_buffer(data.tobytes())]
    )


def _repeat_blocks(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row → block index, and each row's position within its block."""
    block_index = np.repeat(np.arange(len(counts)), counts)
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    position = np.arange(int(counts.sum())) - starts
    return block_index, position


@dataclass(frozen=True)
class BlockSpan:
    """The canonical blocks ``numbers`` with their fork ``generations`` at one moment."""

    seed: int
    numbers: np.ndarray
    generations: np.ndarray
    parent_hashes: np.ndarray  # (n, 4) uint64
    mean_txs_per_block: int

    def keys(self) -> np.ndarray:
        return block_keys(self.seed, self.numbers, self.generations)

    def hashes(self) -> np.ndarray:
        return block_hashes(self.seed, self.numbers, self.generations)

    def timestamps_ns(self) -> np.ndarray:
        seconds = GENESIS_UNIX_SECONDS + self.numbers.astype(np.int64) * SECONDS_PER_BLOCK
        return seconds * 1_000_000_000

    def tx_counts(self) -> np.ndarray:
        draw = _words(self.keys(), _F_TX_COUNT, 1)[:, 0]
        counts = (draw % _U64(2 * self.mean_txs_per_block + 1)).astype(np.int64)
        counts[(draw >> _U64(40)) % _U64(10) == 0] = 0  # one block in ten is empty
        return counts


def generate(table: str, span: BlockSpan) -> pa.Table:
    """The rows of ``table`` for the blocks of ``span``, in block order."""
    if table == "blocks":
        return _blocks(span)
    if table == "transactions":
        return _transactions(span)
    if table == "logs":
        return _logs(span)
    raise KeyError(table)


def _blocks(span: BlockSpan) -> pa.Table:
    rows = len(span.numbers)
    keys = span.keys()
    words = _words(keys, _F_BLOCK_FIELDS, 24)
    numbers = span.numbers.astype(_U64)
    magnitude = (words[:, 20] % _U64(3)).astype(np.int64)
    extra_lengths = (words[:, 21] % _U64(33)).astype(np.int64)
    extra_lengths[words[:, 21] % _U64(4) == 0] = 0
    columns = [
        _uint(numbers, pa.uint64()),
        _uint(numbers, pa.uint64()),
        pa.array(span.timestamps_ns(), TIMESTAMP),
        _fixed(span.hashes(), 32),
        _fixed(span.parent_hashes, 32),
        _fixed(words[:, 0:4], 32),
        _fixed(words[:, 4:7], 20),
        _fixed(words[:, 7:11], 32),
        _fixed(words[:, 11:15], 32),
        _fixed(words[:, 15:19], 32),
        _binary(keys, _F_BYTES, np.full(rows, 256, dtype=np.int64)),
        _decimal(words[:, 19:21], magnitude),
        _decimal(words[:, 20:22], 2 - magnitude, valid=words[:, 22] % _U64(5) != 0),
        _uint(_U64(30_000_000) + words[:, 22] % _U64(1000), pa.uint64()),
        _uint(words[:, 23] % _U64(30_000_000), pa.uint64()),
        _binary(_child_keys(keys, numbers), _F_BYTES, extra_lengths),
        _fixed(words[:, 1:5], 32),
        _uint(words[:, 5], pa.uint64()),
        _decimal(words[:, 6:8], magnitude, valid=words[:, 8] % _U64(4) != 0),
    ]
    return pa.Table.from_arrays(columns, schema=BLOCKS_SCHEMA)


@dataclass(frozen=True)
class _TxRows:
    block_index: np.ndarray
    tx_index: np.ndarray
    keys: np.ndarray
    hashes: np.ndarray  # (n, 4) uint64


def _tx_rows(span: BlockSpan) -> _TxRows:
    block_index, position = _repeat_blocks(span.tx_counts())
    keys = _child_keys(span.keys()[block_index], position)
    return _TxRows(block_index, position, keys, _words(keys, _F_HASH, 4))


def _uint256_strings(words: np.ndarray, kind: np.ndarray) -> list[str | None]:
    """``value`` as decimal text: null, zero, small, or a full 78-digit uint256."""
    values: list[str | None] = []
    for row, row_kind in enumerate(kind.tolist()):
        if row_kind == 0:
            values.append(None)
        elif row_kind == 1:
            values.append("0")
        elif row_kind == 2:
            values.append(str(int(words[row, 0] >> _U64(4))))
        else:
            values.append(str(int.from_bytes(words[row, :4].tobytes(), "little")))
    return values


def _revert_reasons(words: np.ndarray, failed: np.ndarray) -> list[str | None]:
    reasons: list[str | None] = []
    for row, is_failed in enumerate(failed.tolist()):
        if not is_failed:
            reasons.append(None)
        elif words[row, 0] % _U64(3) == 0:
            reasons.append(f"Error(\x00\x00code {int(words[row, 1] % _U64(1000))}\x00)")
        else:
            reasons.append("execution reverted")
    return reasons


def _transactions(span: BlockSpan) -> pa.Table:
    tx = _tx_rows(span)
    rows = len(tx.keys)
    words = _words(tx.keys, _F_TX_FIELDS, 24)
    block_hashes_ = span.hashes()[tx.block_index]
    numbers = span.numbers.astype(_U64)[tx.block_index]
    tx_type = (words[:, 10] % _U64(3)).astype(np.int32)
    eip1559 = tx_type == 2
    failed = words[:, 11] % _U64(20) == 0
    magnitude = (words[:, 12] % _U64(7)).astype(np.int64)
    magnitude = np.where(magnitude < 5, 0, magnitude - 4)
    value_kind = (words[:, 13] % _U64(8)).astype(np.int64)
    value_kind = np.minimum(value_kind, 3)
    nonce = words[:, 14] % _U64(5000)
    nonce[words[:, 14] % _U64(97) == 0] = (
        _U64(0xFFFFFFFFFFFFFFFF) - (words[:, 15] % _U64(3))[words[:, 14] % _U64(97) == 0]
    )
    input_lengths = (words[:, 16] % _U64(300)).astype(np.int64)
    input_lengths[words[:, 16] % _U64(4) == 0] = 0
    columns = [
        _uint(numbers, pa.uint64()),
        _fixed(block_hashes_, 32),
        _uint(numbers, pa.uint64()),
        pa.array(span.timestamps_ns()[tx.block_index], TIMESTAMP),
        _uint(tx.tx_index.astype(np.uint32), pa.uint32()),
        _fixed(tx.hashes, 32),
        _fixed(words[:, 0:3], 20, valid=words[:, 3] % _U64(20) != 0),
        _uint(nonce, pa.uint64()),
        _decimal(words[:, 4:6], magnitude, valid=~eip1559),
        _uint(_U64(21_000) + words[:, 6] % _U64(1_000_000), pa.uint64()),
        pa.array(_uint256_strings(words[:, 17:21], value_kind), pa.utf8()),
        _binary(tx.keys, _F_BYTES, input_lengths),
        _binary(_child_keys(tx.keys, np.full(rows, 1)), _F_BYTES, np.ones(rows, dtype=np.int64)),
        _binary(
            _child_keys(tx.keys, np.full(rows, 2)), _F_BYTES, np.full(rows, 32, dtype=np.int64)
        ),
        _binary(
            _child_keys(tx.keys, np.full(rows, 3)), _F_BYTES, np.full(rows, 32, dtype=np.int64)
        ),
        _uint(_U64(21_000) + words[:, 7] % _U64(500_000), pa.uint64()),
        pa.array(tx_type, pa.int32()),
        _decimal(words[:, 8:10], magnitude, valid=eip1559),
        _decimal(words[:, 9:11], np.zeros(rows, dtype=np.int64), valid=eip1559),
        _fixed(words[:, 21:24], 20),
        pa.array(np.where(failed, 0, 1).astype(np.int32), pa.int32()),
        pa.array(_revert_reasons(words[:, 22:24], failed), pa.utf8()),
    ]
    return pa.Table.from_arrays(columns, schema=TRANSACTIONS_SCHEMA)


def _logs(span: BlockSpan) -> pa.Table:
    tx = _tx_rows(span)
    log_counts = (_words(tx.keys, _F_LOG_COUNT, 1)[:, 0] % _U64(4)).astype(np.int64)
    tx_of_log, position_in_tx = _repeat_blocks(log_counts)
    keys = _child_keys(tx.keys[tx_of_log], position_in_tx)
    words = _words(keys, _F_LOG_FIELDS, 22)
    block_of_log = tx.block_index[tx_of_log]
    logs_per_block = np.bincount(block_of_log, minlength=len(span.numbers))
    _, log_index = _repeat_blocks(logs_per_block)
    # Now and then a block numbers its logs up to 2**32 - 1, the top of UInt32.
    near_max = (span.keys() % _U64(50) == 0)[block_of_log]
    log_index = np.where(
        near_max, (1 << 32) - logs_per_block[block_of_log] + log_index, log_index
    ).astype(np.uint32)
    data_lengths = (words[:, 20] % _U64(200)).astype(np.int64)
    data_lengths[words[:, 20] % _U64(5) == 0] = 0
    topic_draw = words[:, 21]
    numbers = span.numbers.astype(_U64)[block_of_log]
    columns = [
        _uint(numbers, pa.uint64()),
        _fixed(span.hashes()[block_of_log], 32),
        _uint(numbers, pa.uint64()),
        pa.array(span.timestamps_ns()[block_of_log], TIMESTAMP),
        _fixed(tx.hashes[tx_of_log], 32),
        _uint(tx.tx_index[tx_of_log].astype(np.uint32), pa.uint32()),
        pa.array(log_index, pa.uint32()),
        _fixed(words[:, 0:3], 20),
        _fixed(words[:, 3:7], 32, valid=topic_draw % _U64(20) != 0),
        _fixed(words[:, 7:11], 32, valid=(topic_draw >> _U64(8)) % _U64(10) >= 3),
        _fixed(words[:, 11:15], 32, valid=(topic_draw >> _U64(16)) % _U64(10) >= 5),
        _fixed(words[:, 15:19], 32, valid=(topic_draw >> _U64(24)) % _U64(10) >= 7),
        _binary(keys, _F_BYTES, data_lengths),
    ]
    return pa.Table.from_arrays(columns, schema=LOGS_SCHEMA)
