"""Recipes: validated TOML descriptions of a run (data, bias, model, method, meta set, schedule).

    name = "digits-sym40-mwnet"
    seed = 0
    [data]     dataset = "digits", bias = "symmetric:0.4", root = "...", test_fraction = 0.2
    [model]    name = "mlp"  (other keys are passed to the model builder)
    [method]   name = "mwnet" | "cmwnet" | "ce" | "focal" | "gce" | "sce" | "class-balanced"
    [meta]     source = "clean" | "train", per_class, meta_lr, meta_interval, mixup_alpha, ...
    [schedule] epochs, batch_size, lr, momentum, weight_decay, milestones, gamma, warmup_epochs

Unknown sections, keys or ill-typed values are errors naming the recipe and the key.
"""

from __future__ import annotations

import tomllib
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from weightzoo.engine import Schedule
from weightzoo.losses import LOSS_NAMES
from weightzoo.strategies import MetaConfig
from weightzoo.weighters import INPUT_NORMS, NORMALIZATIONS

META_METHODS = ("mwnet", "cmwnet")
METHODS = (*LOSS_NAMES, *META_METHODS)


@dataclass
class DataSection:
    dataset: str = "digits"
    bias: str = "none"
    root: str | None = None
    test_fraction: float = 0.2
    class_map: dict[str, int] | None = None


@dataclass
class MethodSection:
    """name: a baseline loss or a meta-learned weighter; weighter options apply to the latter;
    loss_params are hyper-parameters of a baseline loss (e.g. q for GCE)."""

    name: str = "mwnet"
    num_families: int = 3
    hidden: int = 100
    normalization: str = "sum"
    input_norm: str = "log_classes"
    loss_params: dict[str, float] = field(default_factory=dict)


@dataclass
class Recipe:
    name: str = "recipe"
    description: str = ""
    seed: int = 0
    data: DataSection = field(default_factory=DataSection)
    model: dict[str, Any] = field(default_factory=lambda: {"name": "mlp"})
    method: MethodSection = field(default_factory=MethodSection)
    meta: MetaConfig = field(default_factory=MetaConfig)
    schedule: Schedule = field(default_factory=Schedule)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self, where: str | None = None) -> None:
        """Check values the types alone do not; errors name ``where`` (default: the recipe)."""
        where = where or f"recipe {self.name!r}"
        if self.method.name not in METHODS:
            raise ValueError(f"{where}: unknown method {self.method.name!r}; one of {', '.join(METHODS)}")
        if self.method.normalization not in NORMALIZATIONS:
            raise ValueError(f"{where}: method.normalization must be one of {NORMALIZATIONS}")
        if self.method.input_norm not in INPUT_NORMS:
            raise ValueError(f"{where}: method.input_norm must be one of {INPUT_NORMS}")
        if self.meta.source not in ("clean", "train"):
            raise ValueError(f"{where}: meta.source must be 'clean' or 'train'")
        if "name" not in self.model:
            raise ValueError(f"{where}: [model] needs a name")
        if self.schedule.epochs < 1 or self.schedule.batch_size < 1:
            raise ValueError(f"{where}: schedule.epochs and schedule.batch_size must be >= 1")
        if self.method.num_families < 1 or self.meta.per_class < 1:
            raise ValueError(f"{where}: method.num_families and meta.per_class must be >= 1")
        if self.meta.meta_interval < 1 or self.meta.meta_batch_size < 1:
            raise ValueError(f"{where}: meta.meta_interval and meta.meta_batch_size must be >= 1")
        if self.is_meta and self.schedule.warmup_epochs >= self.schedule.epochs:
            raise ValueError(
                f"{where}: schedule.warmup_epochs ({self.schedule.warmup_epochs}) must be less than "
                f"schedule.epochs ({self.schedule.epochs}), or the weighter is never meta-trained"
            )

    @property
    def is_meta(self) -> bool:
        return self.method.name in META_METHODS


def _check_type(value: Any, annotation: Any, key: str, where: str) -> Any:
    """Validate ``value`` against a (simple) type annotation; ints are accepted as floats."""
    hint = typing.get_origin(annotation)
    if hint in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        for option in options:
            try:
                return _check_type(value, option, key, where)
            except ValueError:
                continue
        raise ValueError(f"{where}: {key} = {value!r} has the wrong type (expected {annotation})")
    if annotation is type(None):
        if value is None:
            return None
    elif hint is list:
        if isinstance(value, list):
            (item,) = typing.get_args(annotation)
            return [_check_type(v, item, key, where) for v in value]
    elif hint is dict:
        if isinstance(value, dict):
            return dict(value)
    elif annotation is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif annotation is Any or (isinstance(annotation, type) and isinstance(value, annotation)):
        if not (annotation is int and isinstance(value, bool)):
            return value
    raise ValueError(f"{where}: {key} = {value!r} has the wrong type (expected {annotation})")


def _build(cls: type, table: dict[str, Any], prefix: str, where: str) -> Any:
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
            values[name] = _build(annotation, value, f"{prefix}{name}.", where)
        else:
            values[name] = _check_type(value, annotation, f"{prefix}{name}", where)
    return cls(**values)


def recipe_from_dict(table: dict[str, Any], where: str = "recipe") -> Recipe:
    """Build and validate a recipe from a parsed TOML table."""
    recipe = _build(Recipe, table, "", where)
    recipe.validate(where)
    return recipe


def builtin_recipes() -> dict[str, Path]:
    """Shipped recipe name -> path."""
    root = Path(str(resources.files("weightzoo.recipes")))
    return {p.stem: p for p in sorted(root.glob("*.toml"))}


def load_recipe(name_or_path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load a shipped recipe by name or a TOML file, then apply ``key=value`` overrides."""
    path = Path(name_or_path)
    if not path.is_file():
        shipped = builtin_recipes()
        if str(name_or_path) not in shipped:
            raise ValueError(
                f"no recipe {str(name_or_path)!r}: not a file and not a shipped recipe "
                f"({', '.join(shipped)})"
            )
        path = shipped[str(name_or_path)]
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: invalid TOML ({err})") from None
    for item in overrides or []:
        _apply_override(table, item)
    table.setdefault("name", path.stem)
    return recipe_from_dict(table, where=str(path))


def _apply_override(table: dict[str, Any], item: str) -> None:
    """``section.key=value``; the value is parsed as TOML (``3``, ``0.1``, ``[1, 2]``, ``true``)
    and taken as a string when it does not parse."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--set expects key=value, got {item!r}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    *sections, leaf = key.strip().split(".")
    node = table
    for section in sections:
        node = node.setdefault(section, {})
        if not isinstance(node, dict):
            raise ValueError(f"--set {key}: {section} is not a section")
    node[leaf] = value

