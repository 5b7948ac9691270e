"""``amp load --parallel N``: a ``ParallelConfig`` load from the command line.

Why ``--partition-table`` defaults to ``<dataset>.blocks``: a parallel load splits the
block numbers of one table (its head fixes the hand-off block when no ``--max-block`` is
given) and reads block hashes from that table's dataset, which must be the dataset the
query reads. Amp's EVM datasets and the dev server all have a ``blocks`` table whose
block column is ``block_num``, so the default fits unless a dataset names them otherwise
(``--partition-table``, ``--block-column``).

Ctrl-C is answered as in the single load (``amp.interrupts``): the first stops every
worker at a microbatch boundary; a second ends the process at once (``exit_at_once``).
The load itself runs as any other (``amp.cli_load_run.CliLoad``).
"""

from __future__ import annotations

import argparse

from amp.errors import ConfigError, ProtocolError
from amp.loop.blockhash import query_dataset
from amp.streaming.parallel import ParallelConfig

# The command line's parallel flags (argparse dests) and the ParallelConfig fields they set.
FIELDS = {
    "parallel": "num_workers",
    "min_block": "min_block",
    "max_block": "max_block",
    "partition_size": "partition_size",
    "reorg_buffer": "reorg_buffer",
    "partition_table": "table_name",
    "block_column": "block_column",
    "executor": "executor",
}


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def add_parallel_arguments(load: argparse.ArgumentParser) -> None:
    group = load.add_argument_group(
        "parallel loading",
        "Split the blocks over N workers, each loading its own partition with its own "
        "checkpoint (use --checkpoint, so that a rerun of the same command skips done "
        "partitions and resumes the others; give it the same parallel flags). Needs "
        "--stream. Shows a bar per partition and prints a summary; exits 1 if a partition "
        "failed.",
    )
    group.add_argument("--parallel", type=int, metavar="N", default=None, help="number of workers")
    group.add_argument(
        "--min-block", type=int, metavar="A", default=None, help="first block loaded (default 0)"
    )
    group.add_argument(
        "--max-block",
        type=int,
        metavar="B",
        default=None,
        help="last block loaded, inclusive; the load ends there. Without it the partitions "
        "end at the head minus --reorg-buffer (fixed when the load first starts) and one "
        "more worker streams live from there",
    )
    group.add_argument(
        "--partition-size",
        type=int,
        metavar="S",
        default=None,
        help="blocks per partition (default: an even split over the workers)",
    )
    group.add_argument(
        "--reorg-buffer",
        type=int,
        metavar="R",
        default=None,
        help="blocks below the head left to the live worker (default 200)",
    )
    group.add_argument(
        "--partition-table",
        metavar="DATASET.TABLE",
        default=None,
        help="the table whose block numbers are split (default: <dataset>.blocks, the "
        "dataset being the query's)",
    )
    group.add_argument(
        "--executor",
        metavar="ADDRESS",
        default=None,
        help="run the partitions as tasks on the Dask cluster whose scheduler listens at "
        "ADDRESS (tcp://host:8786; needs amp-python[dask]); the live worker stays in this "
        "process. Default: threads of this process",
    )
    group.add_argument(
        "--block-column",
        metavar="COLUMN",
        default=None,
        help="the block column of --partition-table (default block_num)",
    )


def default_partition_table(query: str) -> str:
    """``<dataset>.blocks`` of the dataset the query reads."""
    try:
        return f"{query_dataset(query)}.blocks"
    except ProtocolError:
        raise ConfigError(
            "--parallel cannot tell which dataset the query reads (no <dataset>.<table> "
            "after FROM); name the table whose blocks are split with --partition-table, "
            "e.g. --partition-table eth_firehose.blocks"
        ) from None


def parallel_config(args: argparse.Namespace) -> ParallelConfig | None:
    """The ParallelConfig the flags ask for, None without ``--parallel``; checked here,
    before anything connects."""
    given = {dest: getattr(args, dest) for dest in FIELDS if getattr(args, dest) is not None}
    if "parallel" not in given:
        if given:
            flags = ", ".join(_flag(dest) for dest in given)
            raise ConfigError(f"{flags}: only for a parallel load; add --parallel N --stream")
        return None
    if not args.stream:
        raise ConfigError(
            "--parallel needs --stream: each worker streams its partition (and one streams "
            "the live blocks when no --max-block is given); add --stream"
        )
    fields = {FIELDS[dest]: value for dest, value in given.items()}
    if "table_name" not in fields:
        fields["table_name"] = default_partition_table(args.query)
    try:
        return ParallelConfig(**fields)
    except ConfigError as exc:
        # The message names ParallelConfig's fields; say which flags those are.
        named = [
            f"{_flag(dest)} sets {field}" for dest, field in FIELDS.items() if field in str(exc)
        ]
        raise ConfigError(f"{exc} ({'; '.join(named)})" if named else str(exc)) from None
