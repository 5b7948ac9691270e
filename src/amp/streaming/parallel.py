"""``ParallelConfig``: a streaming load split over several workers, and its partitions.

from amp.streaming.parallel import ParallelConfig

cfg = ParallelConfig(num_workers=4, table_name="eth_firehose.blocks", min_block=0,
                     max_block=1_000_000)
client.sql(query).load(connection="pg", destination="blocks", stream=True,
                       parallel_config=cfg)

``[min_block, max_block]`` (both inclusive) is cut into disjoint partitions, each loaded
by one worker through the same loop as a single load, with its own checkpoint. With
``max_block=None`` the partitions end at a hand-off block H (the head minus
``reorg_buffer`` when the load first starts) and one more worker streams live from
H + 1. Everything here is checked when the config is built, so a wrong value fails
before any connection opens. See docs/parallel.md.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from amp.config import suggest, typed
from amp.errors import ConfigError
from amp.redact import redact_url
from amp.streaming.resilience import BackPressureConfig, CircuitBreakerConfig, RetryConfig

__all__ = ["ParallelConfig", "Partition", "plan_partitions"]

_WHERE = "ParallelConfig"
_FIELDS = (
    "num_workers",
    "table_name",
    "min_block",
    "max_block",
    "partition_size",
    "block_column",
    "stop_on_error",
    "reorg_buffer",
    "retry_config",
    "circuit_breaker_config",
    "back_pressure_config",
    "executor",
)
# More workers than this only queue on the destination's connection limit.
MAX_WORKERS = 256


@dataclass(frozen=True, init=False)
class ParallelConfig:
    """How a parallel streaming load splits its blocks; see the module docstring."""

    num_workers: int
    table_name: str
    min_block: int
    max_block: int | None
    partition_size: int | None
    block_column: str
    stop_on_error: bool
    reorg_buffer: int
    retry_config: RetryConfig | None
    circuit_breaker_config: CircuitBreakerConfig | None
    back_pressure_config: BackPressureConfig | None
    executor: Any  # 'threads', a scheduler address, or a distributed.Client

    def __init__(
        self,
        num_workers: int,
        table_name: str,
        min_block: int = 0,
        max_block: int | None = None,
        partition_size: int | None = None,
        block_column: str = "block_num",
        stop_on_error: bool = False,
        reorg_buffer: int = 200,
        retry_config: RetryConfig | None = None,
        circuit_breaker_config: CircuitBreakerConfig | None = None,
        back_pressure_config: BackPressureConfig | None = None,
        executor: Any = "threads",
        **unknown: Any,
    ) -> None:
        for name in unknown:
            raise ConfigError(
                f"unknown {_WHERE} field {name!r}{suggest(name, _FIELDS)}; "
                f"fields: {', '.join(_FIELDS)}"
            )
        _whole(num_workers, "num_workers", 1)
        if num_workers > MAX_WORKERS:
            raise ConfigError(f"{_WHERE} num_workers must be <= {MAX_WORKERS}, got {num_workers}")
        typed(_WHERE, "table_name", table_name, str)
        if not table_name.strip():
            raise ConfigError(
                f"{_WHERE} table_name must name the table whose block column is split, "
                "e.g. 'eth_firehose.blocks'"
            )
        _whole(min_block, "min_block", 0)
        if max_block is not None:
            _whole(max_block, "max_block", 0)
            if min_block > max_block:
                raise ConfigError(
                    f"{_WHERE} min_block ({min_block}) is after max_block ({max_block}); "
                    "max_block is the last block loaded, inclusive"
                )
        if partition_size is not None:
            _whole(partition_size, "partition_size", 1)
        typed(_WHERE, "block_column", block_column, str)
        if not block_column:
            raise ConfigError(f"{_WHERE} block_column must name a column, e.g. 'block_num'")
        typed(_WHERE, "stop_on_error", stop_on_error, bool)
        _whole(reorg_buffer, "reorg_buffer", 0)
        for name, value, kind in (
            ("retry_config", retry_config, RetryConfig),
            ("circuit_breaker_config", circuit_breaker_config, CircuitBreakerConfig),
            ("back_pressure_config", back_pressure_config, BackPressureConfig),
        ):
            if value is not None and not isinstance(value, kind):
                raise ConfigError(
                    f"{_WHERE} {name} must be a {kind.__name__} (from "
                    f"amp.streaming.resilience) or None, got {type(value).__name__}"
                )
        _check_executor(executor)
        values = locals()
        for name in _FIELDS:
            object.__setattr__(self, name, values[name])

    @property
    def dataset(self) -> str:
        """The dataset of ``table_name`` (``eth_firehose`` of ``eth_firehose.blocks``)."""
        return self.table_name.rsplit(".", 1)[0] if "." in self.table_name else ""

    @property
    def on_cluster(self) -> bool:
        """Whether the partitions run as tasks on a Dask cluster."""
        return not (isinstance(self.executor, str) and self.executor == "threads")

    def describe(self) -> dict[str, Any]:
        """The fields a stored plan must agree with (a restart with others is refused)."""
        return {
            "num_workers": self.num_workers,
            "table_name": self.table_name,
            "min_block": self.min_block,
            "max_block": self.max_block,
            "partition_size": self.partition_size,
            "block_column": self.block_column,
            "reorg_buffer": self.reorg_buffer,
        }


# A Dask scheduler address: tcp://host:8786, tls://host:8786, ws://[::1]:8786, ...
_SCHEDULER_ADDRESS = re.compile(r"^[a-z][a-z0-9+]*://(\[[0-9a-fA-F:.]+\]|[^\s:/@\[\]]+):\d{1,5}/?$")


def _check_executor(executor: Any) -> None:
    """'threads', a scheduler address or a ``distributed.Client``; a cluster executor
    needs the ``dask`` extra, which is said now rather than when the load starts."""
    if isinstance(executor, str):
        if executor == "threads":
            return
        if not _SCHEDULER_ADDRESS.match(executor):
            raise ConfigError(
                f"{_WHERE} executor must be 'threads', a Dask scheduler address such as "
                f"'tcp://scheduler-host:8786', or a distributed.Client; got "
                f"{redact_url(executor)!r}"
            )
    elif not _is_dask_client(executor):
        raise ConfigError(
            f"{_WHERE} executor must be 'threads', a Dask scheduler address such as "
            f"'tcp://scheduler-host:8786', or a distributed.Client; got "
            f"{type(executor).__name__}"
        )
    try:
        import distributed  # noqa: F401 - only whether it is there
    except ImportError:
        raise ConfigError(
            f"{_WHERE} executor={executor!r} runs the partitions on a Dask cluster, which "
            "needs the 'distributed' package: pip install 'amp-python[dask]'"
        ) from None


def _is_dask_client(value: Any) -> bool:
    """A ``distributed.Client`` (or a subclass), known without importing distributed."""
    return any(
        kind.__name__ == "Client" and kind.__module__.split(".")[0] == "distributed"
        for kind in type(value).__mro__
    )


def _whole(value: Any, name: str, minimum: int) -> None:
    typed(_WHERE, name, value, int)
    if value < minimum:
        raise ConfigError(f"{_WHERE} {name} must be >= {minimum}, got {value}")


@dataclass(frozen=True)
class Partition:
    """Blocks ``start..end`` (inclusive) loaded by one worker; ``end=None`` is the live
    worker's open range. ``worker_id`` keys its checkpoint and its stream ownership."""

    worker_id: int
    start: int
    end: int | None

    @property
    def live(self) -> bool:
        return self.end is None

    def describe(self) -> str:
        last = "live" if self.end is None else str(self.end)
        return f"partition {self.worker_id} (blocks {self.start}..{last})"

    def to_list(self) -> list[int | None]:
        return [self.worker_id, self.start, self.end]


def plan_partitions(
    first: int, last: int, num_workers: int, partition_size: int | None
) -> list[Partition]:
    """Disjoint partitions covering ``first..last`` exactly (both included): an even
    split over ``num_workers``, or runs of ``partition_size`` blocks."""
    if last < first:
        return []
    total = last - first + 1
    size = partition_size or math.ceil(total / num_workers)
    return [
        Partition(number, start, min(start + size - 1, last))
        for number, start in enumerate(range(first, last + 1, size))
    ]
