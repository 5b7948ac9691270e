"""A loader's own configuration: the type named in ``DataLoader[ConfigType]``.

Why: a destination written outside amp declares its settings once, as a dataclass (or a
TypedDict), and amp checks a connection's config against it at
``configure_connection`` — an unknown key, a missing one or a value of the wrong type
is a ConfigError then, not a failure in the middle of a load. A plain ``dict`` config
(amp's own loaders) is checked against the class's ``config_keys`` and kept as a dict.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar, get_args, get_origin, is_typeddict

from amp.config import check_keys, typed
from amp.errors import ConfigError


def config_type_of(cls: type, base: type) -> Any:
    """The ``ConfigType`` of ``class cls(base[ConfigType])``, None when not given here.

    Raises TypeError for a type amp cannot build a config from, at class definition.
    """
    for parent in cls.__dict__.get("__orig_bases__", ()):  # its own bases, not inherited
        origin = get_origin(parent)
        if not (isinstance(origin, type) and issubclass(origin, base)):
            continue
        (argument,) = get_args(parent)
        if isinstance(argument, TypeVar):
            return None
        if dataclasses.is_dataclass(argument) or is_typeddict(argument):
            return argument
        plain = get_origin(argument) or argument
        if plain is Any or (isinstance(plain, type) and issubclass(plain, Mapping)):
            return dict
        raise TypeError(
            f"{cls.__name__}: DataLoader[{getattr(argument, '__name__', argument)}] — the config "
            "type must be a dataclass, a TypedDict or dict"
        )
    return None


def keys_of(config_type: Any) -> frozenset[str] | None:
    """The keys a config of ``config_type`` may have; None for a plain dict."""
    if dataclasses.is_dataclass(config_type):
        return frozenset(field.name for field in dataclasses.fields(config_type) if field.init)
    if is_typeddict(config_type):
        return frozenset(config_type.__required_keys__ | config_type.__optional_keys__)
    return None


def build_config(where: str, config_type: Any, keys: frozenset[str], given: Any) -> Any:
    """``given`` (a mapping, or already a ``config_type``) checked and built.

    A dataclass is built with its own ``__init__`` (so its ``__post_init__`` validates
    too); a TypeError or ValueError it raises becomes a ConfigError naming ``where``.
    """
    if given is None:
        given = {}
    if config_type is not dict and not is_typeddict(config_type) and isinstance(given, config_type):
        return given
    if not isinstance(given, Mapping):
        raise ConfigError(f"{where} must be a dict, got {type(given).__name__}")
    check_keys(where, given, keys)
    if config_type is dict:
        return dict(given)
    missing = sorted(_required(config_type) - set(given))
    if missing:
        raise ConfigError(f"{where} needs {', '.join(repr(key) for key in missing)}")
    _check_types(where, config_type, given)
    if is_typeddict(config_type):
        return dict(given)
    try:
        return config_type(**given)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _required(config_type: Any) -> frozenset[str]:
    """The keys a config of ``config_type`` cannot do without."""
    if is_typeddict(config_type):
        return frozenset(config_type.__required_keys__)
    return frozenset(
        field.name
        for field in dataclasses.fields(config_type)
        if field.init
        and field.default is dataclasses.MISSING
        and field.default_factory is dataclasses.MISSING
    )


def _check_types(where: str, config_type: Any, given: Mapping[str, Any]) -> None:
    """Each value of a key whose declared type is a plain class (or a union of them, say
    ``str | None``) is of that type; other annotations are left to the config's own
    validation."""
    try:
        hints = typing.get_type_hints(config_type)
    except (NameError, TypeError):  # an annotation that cannot be resolved: not checked
        return
    for key, value in given.items():
        kinds = _plain_kinds(hints.get(key))
        if kinds is None:
            continue
        if float in kinds:
            kinds = (*kinds, int)  # 5 is a fine float
        typed(where, key, value, kinds)


def _plain_kinds(hint: Any) -> tuple[type, ...] | None:
    if hint is None or hint is Any:
        return None
    if isinstance(hint, type) and get_origin(hint) is None:
        return (hint,)
    if get_origin(hint) in (typing.Union, types.UnionType):
        members = get_args(hint)
        if all(isinstance(m, type) and get_origin(m) is None for m in members):
            return tuple(members)
    return None
