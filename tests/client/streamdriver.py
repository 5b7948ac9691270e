"""The client suite's check of every microbatch a streaming load commits, as an
``on_result`` of ``kit.drive``: its range is canonical and it loaded exactly the
canonical rows of its blocks.
"""

from __future__ import annotations

from amp.client import LoadResult
from amp.devserver.chain import SimulatedChain
from amp.streaming.types import hex_hash
from kit import OnResult, block_range, canonical_count, operation


def assert_load_matches_chain(result: LoadResult, chain: SimulatedChain, table: str) -> None:
    """A committed microbatch of a block-numbered query: its range is canonical now and it
    loaded exactly the canonical rows of its blocks. (The chain only changes once the load
    has caught up, so "now" is the moment the server produced the microbatch.)"""
    numbers = block_range(result)
    assert numbers["hash"] == hex_hash(chain.canonical_hash(numbers["end"])), (
        f"range {numbers['start']}..{numbers['end']} ends at a block that is not canonical"
    )
    expected = canonical_count(chain, numbers["start"], numbers["end"], table)
    assert result.rows_loaded == expected, (
        f"microbatch {numbers['start']}..{numbers['end']}: loaded {result.rows_loaded} rows, "
        f"the chain has {expected}"
    )


def checked(chain: SimulatedChain, table: str, then: OnResult | None = None) -> OnResult:
    """An ``on_result`` checking each load result of chain table ``table`` with
    ``assert_load_matches_chain``, then calling ``then``."""

    def check(result: LoadResult) -> object:
        if operation(result) == "load":
            assert_load_matches_chain(result, chain, table)
        return then(result) if then is not None else None

    return check
