"""Loaders by name: what ``configure_connection(name, loader, config)`` looks up.

amp's own loaders are registered by ``amp.loaders``; a destination written elsewhere
registers itself with ``register_loader`` (see docs/loaders.md) and is then configured
exactly like them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar, overload

from amp.config import suggest
from amp.errors import ConfigError
from amp.loaders.base import DataLoader

LOADERS: dict[str, type[DataLoader[Any]]] = {}
# Names of amp's own loaders: never replaced by a registration.
BUILT_IN: set[str] = set()

_NAME = re.compile(r"[a-z][a-z0-9_.-]*")

L = TypeVar("L", bound=type[DataLoader[Any]])


@overload
def register_loader(name: str) -> Callable[[L], L]: ...


@overload
def register_loader(name: str, cls: L) -> L: ...


def register_loader(name: str, cls: L | None = None) -> L | Callable[[L], L]:
    """Register ``cls`` as loader ``name``: ``register_loader('ndjson', NDJSONLoader)``, or
    ``@register_loader('ndjson')`` above the class. Sets ``cls.loader_type`` to ``name``.

    Registering the same class again (a module run twice, a notebook cell re-run) is
    allowed; taking a name another class holds, or one of amp's own, is a ConfigError.
    """

    def register(loader: L) -> L:
        _check(name, loader)
        loader.loader_type = name
        LOADERS[name] = loader
        return loader

    return register if cls is None else register(cls)


def register_built_in(cls: type[DataLoader[Any]]) -> None:
    """Register one of amp's own loaders under its ``loader_type``."""
    LOADERS[cls.loader_type] = cls
    BUILT_IN.add(cls.loader_type)


def _check(name: str, cls: type) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(
            f"a loader name is lower-case letters, digits, '_', '.' or '-', starting with a "
            f"letter (it is what configure_connection's loader argument says), got {name!r}"
        )
    if not (isinstance(cls, type) and issubclass(cls, DataLoader)):
        raise ConfigError(f"register_loader({name!r}) needs a DataLoader subclass, got {cls!r}")
    if name in BUILT_IN:
        raise ConfigError(
            f"{name!r} is one of amp's own loaders; register yours under another name"
        )
    declared = cls.__dict__.get("loader_type")  # the class's own, not a parent's
    if declared not in (None, name, cls.__name__):
        raise ConfigError(
            f"{cls.__name__} declares loader_type {declared!r}; register it under that name"
        )
    held = LOADERS.get(name)
    if held is not None and _identity(held) != _identity(cls):
        raise ConfigError(
            f"loader {name!r} is already registered to {_identity(held)}; register "
            f"{_identity(cls)} under another name"
        )


def _identity(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def loader_class(name: str) -> type[DataLoader[Any]]:
    """The loader registered as ``name``; ConfigError listing the known ones otherwise."""
    try:
        return LOADERS[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown loader {name!r}{suggest(str(name), LOADERS)}; "
            f"available loaders: {', '.join(sorted(LOADERS))}"
        ) from None
