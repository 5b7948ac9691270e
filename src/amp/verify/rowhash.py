"""64-bit hashes of rows, computed the same way for the server's rows and the destination's.

Why amp hashes (not the databases): a checksum computed in SQL would depend on each
dialect's text forms and hash functions, so PostgreSQL, DuckDB and the Amp server would
never agree. Here every value is first put in one canonical form that does not depend on
where it was read from, then hashed with numpy, vectorised:

- integers and decimals: their decimal text (``uint64`` 5, PostgreSQL ``NUMERIC`` 5 and
  DuckDB ``UBIGINT`` 5 are all ``"5"``; a decimal keeps its scale, ``"1.50"``);
- floats: the text of the float64 value; booleans: ``"true"``/``"false"``;
- timestamps: integer nanoseconds since the epoch (the time zone only labels them);
  dates: days; times: nanoseconds;
- text and binary: their bytes (so text PostgreSQL stored as BYTEA compares equal).

A value's hash is a sum over its 64-bit words of each word mixed with its position,
mixed with its length; a null has its own constant. A row's hash folds its columns' hashes in order.
Sums wrap modulo 2**64 throughout, so a range's checksum (the sum of its rows' hashes)
does not depend on the order rows arrive in, and a duplicated row changes it.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from amp.errors import ConfigError

Hashes = npt.NDArray[np.uint64]

_NULL_HASH = np.uint64(0x9E3779B97F4A7C15)
_LENGTH_SALT = np.uint64(0xD6E8FEB86659FD93)
_COLUMN_SALT = np.uint64(0xA0761D6478BD642F)
_POSITION_SALT = np.uint64(0xE7037ED1A0B428DB)
# Bytes hashed at once: bounds the temporaries (about 25 bytes a byte) of a wide column.
_SLICE_BYTES = 1 << 20


def _mix(values: Hashes) -> Hashes:
    """splitmix64's finaliser: every input bit moves about half the output bits."""
    with np.errstate(over="ignore"):
        values = values ^ (values >> np.uint64(30))
        values = values * np.uint64(0xBF58476D1CE4E5B9)
        values = values ^ (values >> np.uint64(27))
        values = values * np.uint64(0x94D049BB133111EB)
        return values ^ (values >> np.uint64(31))


def comparable(data_type: pa.DataType) -> bool:
    """Whether values of this Arrow type have a canonical form (nested types do not)."""
    return not (
        pa.types.is_nested(data_type)
        or pa.types.is_dictionary(data_type)
        or pa.types.is_duration(data_type)
        or pa.types.is_interval(data_type)
    )


def canonical(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The column as ``large_binary`` in the canonical form of the module docstring."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    data_type = column.type
    if pa.types.is_null(data_type):
        return pa.nulls(len(column), pa.large_binary())
    if pa.types.is_timestamp(data_type):
        column = column.cast(pa.timestamp("ns", tz=data_type.tz)).cast(pa.int64())
    elif pa.types.is_date(data_type):
        column = column.cast(pa.date32()).cast(pa.int32())
    elif pa.types.is_time(data_type):
        column = column.cast(pa.time64("ns")).cast(pa.int64())
    elif pa.types.is_floating(data_type):
        column = column.cast(pa.float64())
    if not comparable(column.type):
        raise ConfigError(f"values of type {data_type} cannot be compared")
    if not (
        pa.types.is_binary(column.type)
        or pa.types.is_large_binary(column.type)
        or pa.types.is_fixed_size_binary(column.type)
        or pa.types.is_binary_view(column.type)
    ):
        column = column.cast(pa.string())
    return column.cast(pa.large_binary())


def _sliced_hashes(column: pa.Array) -> Hashes:
    """Hashes of the values of one ``large_binary`` array, nulls included: each value's
    bytes are laid out in little-endian 64-bit words (the last one zero-padded), each
    word mixed with its position, and the mixed words summed."""
    count = len(column)
    _, offsets_buffer, data_buffer = column.buffers()
    start = column.offset
    offsets = np.frombuffer(offsets_buffer, dtype=np.int64)[start : start + count + 1]
    data = (
        np.frombuffer(data_buffer, dtype=np.uint8)
        if data_buffer is not None
        else np.zeros(0, np.uint8)
    )
    first, last = int(offsets[0]), int(offsets[-1])
    lengths = np.diff(offsets)
    word_counts = (lengths + 7) // 8
    word_ends = np.cumsum(word_counts)
    word_starts = word_ends - word_counts
    total_words = int(word_ends[-1]) if count else 0
    padded = np.zeros(total_words * 8, dtype=np.uint8)
    shift = np.repeat(word_starts * 8 - (offsets[:-1] - first), lengths)
    padded[np.arange(last - first, dtype=np.int64) + shift] = data[first:last]
    words = padded.view(np.dtype("<u8")).astype(np.uint64)
    positions = np.arange(total_words, dtype=np.int64) - np.repeat(word_starts, word_counts)
    with np.errstate(over="ignore"):
        mixed = _mix(words ^ _mix(positions.astype(np.uint64) + _POSITION_SALT))
        running = np.zeros(total_words + 1, dtype=np.uint64)
        np.cumsum(mixed, out=running[1:])
        sums = running[word_ends] - running[word_starts]
        hashes = _mix(sums + _mix(lengths.astype(np.uint64) + _LENGTH_SALT))
    if column.null_count:
        valid = np.asarray(column.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        hashes = np.where(valid, hashes, _NULL_HASH)
    return hashes


def value_hashes(column: pa.Array | pa.ChunkedArray) -> Hashes:
    """One hash per value of ``column``, by slices of at most about ``_SLICE_BYTES``."""
    values = canonical(column)
    lengths = pc.binary_length(values).fill_null(0).to_numpy(zero_copy_only=False)
    ends = np.cumsum(lengths, dtype=np.int64)
    parts = []
    start = 0
    while start < len(values):
        budget = (ends[start - 1] if start else 0) + _SLICE_BYTES
        stop = max(start + 1, int(np.searchsorted(ends, budget, side="right")))
        parts.append(_sliced_hashes(values.slice(start, stop - start)))
        start = stop
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)


def row_hashes(batch: pa.RecordBatch | pa.Table, columns: list[str]) -> Hashes:
    """One hash per row over ``columns``, in that order (both sides pass the same list)."""
    hashes = np.zeros(batch.num_rows, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for name in columns:
            hashes = _mix(hashes * _COLUMN_SALT + value_hashes(batch.column(name)))
    return hashes


def checksum(hashes: Hashes) -> int:
    """The order-independent checksum of a set of rows: their hashes' sum mod 2**64."""
    with np.errstate(over="ignore"):
        return int(np.sum(hashes, dtype=np.uint64))
