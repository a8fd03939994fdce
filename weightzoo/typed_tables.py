"""Typed TOML tables: build a dataclass from a parsed table, checking every key and type.

Errors name ``where`` (the recipe file) and the full key (``method.meta.meta_lr``).
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import asdict, fields, is_dataclass
from typing import Any


def check_type(value: Any, annotation: Any, key: str, where: str) -> Any:
    """Validate ``value`` against a (simple) type annotation; ints are accepted as floats."""
    hint = typing.get_origin(annotation)
    if hint in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        for option in options:
            try:
                return check_type(value, option, key, where)
            except ValueError:
                continue
        raise ValueError(f"{where}: {key} = {value!r} has the wrong type (expected {annotation})")
    if annotation is type(None):
        if value is None:
            return None
    elif hint is list:
        if isinstance(value, list):
            (item,) = typing.get_args(annotation)
            if is_dataclass(item):  # an array of tables
                if not all(isinstance(v, dict) for v in value):
                    raise ValueError(f"{where}: {key} must be an array of tables ([[{key}]])")
                return [build_dataclass(item, v, f"{key}[{i}].", where) for i, v in enumerate(value)]
            return [check_type(v, item, key, where) for v in value]
    elif hint is dict:
        if isinstance(value, dict):
            return dict(value)
    elif annotation is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ValueError(f"{where}: {key} = {value!r} must be a finite number")
            return float(value)
    elif annotation is Any or (isinstance(annotation, type) and isinstance(value, annotation)):
        if not (annotation is int and isinstance(value, bool)):
            return value
    raise ValueError(f"{where}: {key} = {value!r} has the wrong type (expected {annotation})")


def build_dataclass(cls: type, table: dict[str, Any], prefix: str, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(table) - set(known))
    if unknown:
        names = ", ".join(f"{prefix}{k}" for k in unknown)
        raise ValueError(f"{where}: unknown key(s) {names} (known: {', '.join(sorted(known))})")
    values = {}
    for name, value in table.items():
        annotation = hints[name]
        if is_dataclass(annotation):
            if not isinstance(value, dict):
                raise ValueError(f"{where}: [{prefix}{name}] must be a table")
            values[name] = build_dataclass(annotation, value, f"{prefix}{name}.", where)
        else:
            values[name] = check_type(value, annotation, f"{prefix}{name}", where)
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        section = f"[{prefix.rstrip('.')}] " if prefix else ""
        raise ValueError(f"{where}: {section}{err}") from None


def short_list(items: list[str], shown: int = 5) -> str:
    """``a, b, c`` -- at most ``shown`` names, then ``... and N more`` (errors stay one line)."""
    text = ", ".join(items[:shown])
    return text + (f" ... and {len(items) - shown} more" if len(items) > shown else "")


def from_known_keys(cls: type, data: dict[str, Any], what: str) -> Any:
    """``cls(**data)`` after refusing keys that are not fields of ``cls``."""
    unknown = sorted(set(data) - {f.name for f in fields(cls)})
    if unknown:
        raise ValueError(f"unknown {what} keys: {short_list(unknown)}")
    return cls(**data)


class DictRecord:
    """Dataclass mixin: ``to_dict`` / ``from_dict`` (unknown keys refused) for JSON configs."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        return from_known_keys(cls, data, getattr(cls, "record_name", cls.__name__))
