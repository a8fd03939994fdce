"""The method registry: every training method is registered here by name, with its typed config.

    @register_method("my-method", MyConfig, description="...")
    class MyMethod(Method):
        def __init__(self, config: MyConfig) -> None: ...

A recipe's ``[method]`` table (``name`` plus the method's own keys) is validated by the
registered config dataclass; a config may define ``validate(schedule)`` for checks that
need the schedule.  Nothing else in weightzoo dispatches on method names: the pipeline, the
CLI and the recipes all go through :func:`method_spec` / :func:`build_method`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from weightzoo.methods.base import Method
from weightzoo.typed_tables import build_dataclass

F = TypeVar("F", bound=Callable[..., Method])


@dataclass(frozen=True)
class MethodSpec:
    """name; config_class: the dataclass of its ``[method]`` keys; build: config -> Method;
    baseline: trainable with its default config on any data (offered as ``--baseline``);
    publishes: its runs write a weighter artifact; description: one line for listings."""

    name: str
    config_class: type
    build: Callable[[Any], Method]
    baseline: bool
    publishes: bool
    description: str

    def parse(self, table: dict[str, Any], where: str) -> Any:
        """The method's config from its ``[method]`` table (without ``name``)."""
        return build_dataclass(self.config_class, table, "method.", where)

    def create(self, config: Any | None = None) -> Method:
        method = self.build(self.config_class() if config is None else config)
        method.name = self.name
        return method


_METHODS: dict[str, MethodSpec] = {}


def register_method(
    name: str, config_class: type, *, baseline: bool = False, publishes: bool = False,
    description: str = "",
) -> Callable[[F], F]:
    """Decorator registering a Method class (or a factory ``config -> Method``) as ``name``."""

    def decorate(build: F) -> F:
        if name in _METHODS:
            raise ValueError(f"a method named {name!r} is already registered")
        _METHODS[name] = MethodSpec(name, config_class, build, baseline, publishes, description)
        return build

    return decorate


def method_names(*, baseline: bool | None = None) -> tuple[str, ...]:
    """Registered names (only the baselines with ``baseline=True``), sorted."""
    return tuple(sorted(n for n, s in _METHODS.items() if baseline is None or s.baseline == baseline))


def method_spec(name: str) -> MethodSpec:
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; one of {', '.join(method_names())}")
    return _METHODS[name]


def build_method(name: str, config: Any | None = None) -> Method:
    """A fresh method ``name`` with ``config`` (default: the config class's defaults)."""
    return method_spec(name).create(config)


def config_dict(name: str, config: Any) -> dict[str, Any]:
    """The ``[method]`` table of ``config``: ``{"name": name, **fields}``."""
    return {"name": name, **asdict(config)}
