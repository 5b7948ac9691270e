"""A named connection's checked settings, and the loaders built from them.

Why a module of its own: a connection is built in more than one place. ``Client``
builds its loader when the connection is configured, and one more per worker of a
parallel load; a partition task on a Dask worker builds the same connection from the
loader name and config the user gave (``amp.cluster.task``). Every one of them is checked
and assembled here, the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from amp.config import check_keys
from amp.errors import ConfigError
from amp.loaders import DataLoader, loader_class
from amp.loop.grouping import CommitGrouping
from amp.streaming.checkpoint import CheckpointConfig
from amp.streaming.idempotency import IdempotencyConfig
from amp.streaming.parallel import ParallelConfig
from amp.streaming.resilience import Edge, ResilienceConfig

# Keys every connection accepts besides its loader's own (amp's delivery features).
COMMON_KEYS = frozenset({"resilience", "checkpoint", "idempotency", "commit_grouping"})


@dataclass(frozen=True)
class ConnectionSettings:
    """A connection's checked configuration: one loader per connection is built from
    it, and one more per worker of a parallel load."""

    loader: str  # the registered loader name
    cls: type[DataLoader[Any]]
    own: dict[str, Any]  # the loader's own keys
    resilience: ResilienceConfig
    checkpoint: CheckpointConfig
    idempotency: IdempotencyConfig
    grouping: CommitGrouping

    @classmethod
    def parse(cls, name: str, loader: str, config: Mapping[str, Any]) -> ConnectionSettings:
        """Check ``config`` for ``loader`` (every key, every value) now, before any
        connection opens."""
        loader_cls = loader_class(loader)
        if not isinstance(config, Mapping):
            raise ConfigError(f"config for {name!r} must be a dict, got {type(config).__name__}")
        check_keys(f"{loader} config", config, loader_cls.config_keys | COMMON_KEYS)
        idempotency = IdempotencyConfig.from_dict(config.get("idempotency"))
        idempotency.mode_in_effect(loader, loader_cls.transactional)
        settings = cls(
            loader=loader,
            cls=loader_cls,
            own={key: value for key, value in config.items() if key not in COMMON_KEYS},
            resilience=ResilienceConfig.from_dict(config.get("resilience")),
            checkpoint=CheckpointConfig.from_dict(config.get("checkpoint")),
            idempotency=idempotency,
            grouping=CommitGrouping.from_dict(config.get("commit_grouping")),
        )
        keeps_state = settings.checkpoint.enabled or settings.idempotency.enabled
        if keeps_state and not hasattr(loader_cls, "state_store"):
            raise ConfigError(
                f"the {loader} loader cannot keep checkpoints or processed ranges in its "
                "destination (it has no state_store()); disable 'checkpoint' and "
                "'idempotency' for it"
            )
        return settings

    def build(self, name: str, edge: Edge | None = None) -> DataLoader[Any]:
        """A new loader of this connection; ``edge``: the destination edge it shares
        (its breaker) with the connection's other loaders."""
        instance = self.cls.for_connection(dict(self.own), name)
        instance.configure_resilience(self.resilience, edge=edge)
        instance.checkpoint_config = self.checkpoint
        instance.idempotency_config = self.idempotency
        return instance

    def for_parallel(self, config: ParallelConfig) -> ConnectionSettings:
        """These settings with a parallel load's own retry, breaker and back-pressure
        configs in place of the connection's, where it gives them."""
        base = self.resilience
        resilience = replace(
            base,
            retry=config.retry_config or base.retry,
            circuit_breaker=config.circuit_breaker_config or base.circuit_breaker,
            back_pressure=config.back_pressure_config or base.back_pressure,
        )
        return self if resilience == base else replace(self, resilience=resilience)
