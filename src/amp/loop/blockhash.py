"""The hash of one block, read from the server (protocol §4: "a block's hash can be read
with a batch query of the dataset's ``blocks`` table").

Why: to resume a stream exactly at block ``a`` the cursor is ``(a - 1, hash of a - 1)``.
A reorg of rows keyed by their microbatch's range must restart at the start of the
microbatch that straddles the fork, whose parent hash the destination does not keep.
"""

from __future__ import annotations

from sqlglot.tokens import Tokenizer, TokenType

from amp.errors import ProtocolError
from amp.flight.seam import Transport
from amp.streaming.reader import batch_events
from amp.streaming.types import BlockRange, hex_hash

_NAME = (TokenType.VAR, TokenType.IDENTIFIER)


def query_dataset(sql: str) -> str:
    """The dataset of the first ``<dataset>.<table>`` the query reads."""
    tokens = Tokenizer().tokenize(sql)
    for index, token in enumerate(tokens[:-3]):
        if token.token_type not in (TokenType.FROM, TokenType.JOIN):
            continue
        dataset, dot, table = tokens[index + 1 : index + 4]
        if (
            dataset.token_type in _NAME
            and dot.token_type is TokenType.DOT
            and table.token_type in _NAME
        ):
            return dataset.text
    raise ProtocolError(
        "cannot tell which dataset the query reads (no <dataset>.<table> after FROM), so "
        "the hash of a block cannot be looked up; name its tables as <dataset>.<table>"
    )


def read_block_hash(transport: Transport, sql: str, network: str, number: int) -> str:
    """The canonical hash of block ``number`` of the query's dataset."""
    dataset = query_dataset(sql)
    query = f'SELECT hash FROM "{dataset}".blocks WHERE block_num = {int(number)}'
    source = transport.execute(query, streaming=False)
    try:
        values = [
            value
            for message in source.messages()
            for value in message.batch.column("hash").to_pylist()
        ]
    finally:
        source.close()
    if len(values) != 1:
        raise ProtocolError(
            f"the server has {len(values)} rows for block {number} in {dataset}.blocks "
            f"(network {network}); expected exactly one"
        )
    value = values[0]
    return hex_hash(value) if isinstance(value, bytes) else str(value)


def block_cursor(transport: Transport, dataset: str, number: int) -> BlockRange | None:
    """Block ``number`` of ``dataset`` as a resume cursor: its network, number and hash;
    None while the chain has not reached it.

    The network comes from the batch result's ``ranges`` (protocol §2, servers since
    December 2025); a stream cannot be started at a chosen block without it.
    """
    query = f'SELECT hash FROM "{dataset}".blocks WHERE block_num = {int(number)}'
    source = transport.execute(query, streaming=False)
    try:
        events = list(batch_events(source.messages()))
    finally:
        source.close()
    hashes = [value for event in events for value in event.batch.column("hash").to_pylist()]
    networks = {r.network for event in events for r in event.ranges}
    if not hashes:
        return None
    if len(hashes) != 1:
        raise ProtocolError(
            f"the server has {len(hashes)} rows for block {number} in {dataset}.blocks; "
            "expected exactly one"
        )
    if len(networks) != 1:
        raise ProtocolError(
            f"the server's answer for block {number} of {dataset}.blocks names "
            f"{len(networks)} networks in its metadata, so a stream cannot be started at "
            "a chosen block; a parallel load needs a server that sends block ranges with "
            "batch results (Amp since December 2025)"
        )
    value = hashes[0]
    block_hash = hex_hash(value) if isinstance(value, bytes) else str(value)
    return BlockRange(networks.pop(), number, number, hash=block_hash)


def chain_head(transport: Transport, table: str, column: str) -> int | None:
    """The highest ``column`` value of ``table`` on the server, None when it is empty."""
    dataset, _, name = table.rpartition(".")
    target = f'"{dataset}"."{name}"' if dataset else f'"{name}"'
    query = f'SELECT MAX("{column}") AS head FROM {target}'
    source = transport.execute(query, streaming=False)
    try:
        values = [
            value
            for event in batch_events(source.messages())
            for value in event.batch.column("head").to_pylist()
        ]
    finally:
        source.close()
    return int(values[0]) if values and values[0] is not None else None
