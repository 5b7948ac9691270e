"""The simulated chain: canonical blocks, forks, reorgs and the oracle of canonical rows.

A block is identified by ``(number, generation)``. Generation 0 is the original history;
each reorg creates a new generation that replaces the canonical blocks from its fork
height upwards, and the replaced blocks stay resolvable as forked blocks. Hashes and
rows are pure functions of the seed and the block identity (see ``datagen``), so the
chain stores only the fork structure, never rows.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa

from amp.devserver import datagen

ZERO_HASH = b"\x00" * 32
# Blocks per numpy pass when generating a range's rows (bounds the generator's memory).
GENERATE_CHUNK_BLOCKS = 1000


@dataclass(frozen=True)
class Fork:
    """A generation of blocks: they start at ``start`` on top of ``parent_generation``."""

    generation: int
    start: int
    parent_generation: int


@dataclass(frozen=True)
class ReorgEvent:
    """One reorg: blocks ``fork_height..old_head`` were replaced by ``generation``."""

    fork_height: int
    depth: int
    old_head: int
    generation: int


@dataclass(frozen=True)
class RangeSnapshot:
    """Canonical blocks ``start..end`` as they were at one moment, with their hashes."""

    network: str
    start: int
    end: int
    span: datagen.BlockSpan

    @property
    def hash(self) -> bytes:
        return self.span.hashes()[-1].tobytes()

    @property
    def prev_hash(self) -> bytes:
        return self.span.parent_hashes[0].tobytes()

    @property
    def timestamp(self) -> int:
        return datagen.GENESIS_UNIX_SECONDS + self.end * datagen.SECONDS_PER_BLOCK

    def table(self, name: str) -> pa.Table:
        # Generated GENERATE_CHUNK_BLOCKS at a time: one numpy pass over a long range would
        # hold intermediates several times the result's size (a whole-chain batch query).
        if self.end - self.start < GENERATE_CHUNK_BLOCKS:
            return datagen.generate(name, self.span)
        step = GENERATE_CHUNK_BLOCKS
        return pa.concat_tables(
            datagen.generate(name, self.slice(start, min(self.end, start + step - 1)).span)
            for start in range(self.start, self.end + 1, step)
        )

    def slice(self, start: int, end: int) -> RangeSnapshot:
        """The sub-range ``start..end`` of this snapshot (same moment, same hashes)."""
        low, high = start - self.start, end - self.start + 1
        span = replace(
            self.span,
            numbers=self.span.numbers[low:high],
            generations=self.span.generations[low:high],
            parent_hashes=self.span.parent_hashes[low:high],
        )
        return RangeSnapshot(self.network, start, end, span)


class SimulatedChain:
    """A deterministic chain with on-demand mining and reorgs; safe across threads.

    Waiters (streams) block on ``changed`` and are woken by every mine and reorg.
    """

    def __init__(
        self,
        seed: int = 1,
        network: str = "mainnet",
        start_block: int = 0,
        initial_blocks: int = 100,
        mean_txs_per_block: int = 10,
    ) -> None:
        if start_block < 0:
            raise ValueError(f"start_block must be >= 0, got {start_block}")
        if initial_blocks < 0:
            raise ValueError(f"initial_blocks must be >= 0, got {initial_blocks}")
        if mean_txs_per_block < 0:
            raise ValueError(f"mean_txs_per_block must be >= 0, got {mean_txs_per_block}")
        self.seed = seed
        self.network = network
        self.first_block = start_block
        self.mean_txs_per_block = mean_txs_per_block
        self.changed = threading.Condition()
        self._head = start_block + initial_blocks - 1
        self._forks: dict[int, Fork] = {0: Fork(0, start_block, 0)}
        # Canonical generation by height: segment i covers [starts[i], starts[i+1]).
        self._segment_starts: list[int] = [start_block]
        self._segment_generations: list[int] = [0]
        self._forked: dict[bytes, tuple[int, int]] = {}
        self._reorgs: list[ReorgEvent] = []

    # -- reading -------------------------------------------------------------------

    @property
    def head(self) -> int:
        """The latest canonical block number (``first_block - 1`` while empty)."""
        return self._head

    @property
    def reorgs(self) -> list[ReorgEvent]:
        with self.changed:
            return list(self._reorgs)

    def _generation_at(self, number: int) -> int:
        if number < self.first_block:  # the parent of the first block: pre-history
            return 0
        index = bisect.bisect_right(self._segment_starts, number) - 1
        return self._segment_generations[index]

    def _generations(self, start: int, end: int) -> np.ndarray:
        generations = np.empty(end - start + 1, dtype=np.uint64)
        for index, segment_start in enumerate(self._segment_starts):
            segment_end = (
                self._segment_starts[index + 1] - 1
                if index + 1 < len(self._segment_starts)
                else end
            )
            low, high = max(start, segment_start), min(end, segment_end)
            if low <= high:
                generations[low - start : high - start + 1] = self._segment_generations[index]
        return generations

    def _hash(self, number: int, generation: int) -> bytes:
        if number < 0:  # the parent of genesis
            return ZERO_HASH
        return datagen.block_hash(self.seed, number, generation)

    def canonical_hash(self, number: int) -> bytes:
        """Hash of canonical block ``number`` (for ``first_block - 1``: the parent of the first)."""
        with self.changed:
            if number > self._head:
                raise KeyError(f"block {number} is above the head {self._head}")
            return self._hash(number, self._generation_at(number))

    def snapshot(self, start: int, end: int) -> RangeSnapshot:
        """The canonical blocks ``start..end`` at this moment."""
        with self.changed:
            if start < self.first_block or end > self._head or start > end:
                raise ValueError(
                    f"range {start}..{end} is outside the chain {self.first_block}..{self._head}"
                )
            generations = self._generations(start, end)
            parent = self._hash(start - 1, self._generation_at(start - 1))
        numbers = np.arange(start, end + 1, dtype=np.uint64)
        hashes = datagen.block_hashes(self.seed, numbers, generations)
        parent_hashes = np.concatenate(
            [np.frombuffer(parent, dtype=np.uint64).reshape(1, 4), hashes[:-1]]
        )
        span = datagen.BlockSpan(
            seed=self.seed,
            numbers=numbers,
            generations=generations,
            parent_hashes=parent_hashes,
            mean_txs_per_block=self.mean_txs_per_block,
        )
        return RangeSnapshot(self.network, start, end, span)

    def canonical_table(self, name: str, chunk_blocks: int = 10_000) -> pa.Table:
        """Every canonical row of ``name`` now: the oracle a destination must equal."""
        if name not in datagen.TABLE_SCHEMAS:
            raise KeyError(f"unknown table {name!r}; tables: {sorted(datagen.TABLE_SCHEMAS)}")
        with self.changed:
            head = self._head
            parts = [
                self.snapshot(start, min(head, start + chunk_blocks - 1)).table(name)
                for start in range(self.first_block, head + 1, chunk_blocks)
            ]
        if not parts:
            return datagen.TABLE_SCHEMAS[name].empty_table()
        return pa.concat_tables(parts)

    def classify(self, number: int, block_hash: bytes) -> str:
        """``'canonical'``, ``'forked'`` or ``'unknown'`` for a block number and hash."""
        with self.changed:
            if self.first_block - 1 <= number <= self._head and block_hash == self._hash(
                number, self._generation_at(number)
            ):
                return "canonical"
            if self._forked.get(block_hash, (None,))[0] == number:
                return "forked"
            return "unknown"

    def common_ancestor(self, number: int, block_hash: bytes) -> int:
        """Highest canonical ancestor of a known block (itself when canonical)."""
        with self.changed:
            if self.classify(number, block_hash) == "canonical":
                return number
            if block_hash not in self._forked:
                raise KeyError(f"unknown block {number} {block_hash.hex()}")
            number, generation = self._forked[block_hash]
            while number >= self.first_block:
                if self._generation_at(number) == generation and number <= self._head:
                    return number
                fork = self._forks[generation]
                if number <= fork.start:
                    generation = fork.parent_generation
                number -= 1
            return self.first_block - 1

    # -- changing ------------------------------------------------------------------

    def mine(self, count: int = 1) -> int:
        """Append ``count`` canonical blocks; returns the new head."""
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        with self.changed:
            self._head += count
            self.changed.notify_all()
            return self._head

    def reorg(self, depth: int) -> ReorgEvent:
        """Replace the last ``depth`` canonical blocks by a fork of the same length."""
        with self.changed:
            length = self._head - self.first_block + 1
            if not 1 <= depth <= length:
                raise ValueError(f"reorg depth must be between 1 and {length}, got {depth}")
            fork_height = self._head - depth + 1
            for number in range(fork_height, self._head + 1):
                generation = self._generation_at(number)
                self._forked[self._hash(number, generation)] = (number, generation)
            generation = len(self._forks)
            self._forks[generation] = Fork(
                generation, fork_height, self._generation_at(fork_height - 1)
            )
            index = bisect.bisect_left(self._segment_starts, fork_height)
            del self._segment_starts[index:]
            del self._segment_generations[index:]
            self._segment_starts.append(fork_height)
            self._segment_generations.append(generation)
            event = ReorgEvent(fork_height, depth, self._head, generation)
            self._reorgs.append(event)
            self.changed.notify_all()
            return event
