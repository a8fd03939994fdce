"""Recipes: validated TOML descriptions of a run (data, bias, model, method, schedule).

    name = "digits-sym40-mwnet"
    seed = 0
    [data]        dataset = "digits", bias = "symmetric:0.4", root = "...", test_fraction = 0.2
    [model]       name = "mlp"  (other keys are passed to the model builder)
    [method]      name = any registered method (``weightzoo methods``) + that method's keys
    [method.meta] meta-learning options of a meta method (``[meta]`` at the top level is
                  the same table, as recipes before 0.2 wrote it)
    [schedule]    epochs, batch_size, lr, momentum, weight_decay, milestones, gamma, warmup_epochs,
                  rebalance ("none" or "deferred": DRW from the first milestone; plain losses
                  and frozen artifacts only)
    [regime]      name = "supervised" (default) or "partial" (PRODEN, then [method] on its
                  predicted labels; ``weightzoo.partial_regime``), proden_weighter
    [[sources]]   more data sets, keys as [data] (multi-source training: a model per source,
                  one weighter meta-learned on all of them; ``weightzoo.training.joint``)
    imports = ["my_pkg.methods"]   modules imported first (they register their own methods)

The ``[method]`` table is validated by the method's registered config dataclass; unknown
sections, keys or ill-typed values are errors naming the recipe and the key.
"""

from __future__ import annotations

import importlib
import tomllib
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

from weightzoo.methods.base import Method
from weightzoo.methods.fixmatch import SemiSupervisedConfig
from weightzoo.methods.registry import MethodSpec, config_dict, method_spec
from weightzoo.partial_regime import RegimeSection
from weightzoo.training.engine import Schedule
from weightzoo.typed_tables import build_dataclass

DEFAULT_METHOD = "mwnet"


@dataclass
class DataSection:
    """dataset / bias / root / test_fraction / class_map: what to load and how to bias it;
    meta_per_class: clean samples per class held out of training as the meta set (default:
    what the method asks for, e.g. 10 for ``mwnet`` with ``meta.source = "clean"``, else 0);
    set it for a baseline to train on exactly the data a meta method sees."""

    dataset: str = "digits"
    bias: str = "none"
    root: str | None = None
    test_fraction: float = 0.2
    class_map: dict[str, int] | None = None
    meta_per_class: int | None = None


@dataclass
class MethodChoice:
    """A registered method and its validated config (the recipe's ``[method]`` table)."""

    name: str
    config: Any

    @property
    def spec(self) -> MethodSpec:
        return method_spec(self.name)

    def build(self) -> Method:
        return self.spec.create(self.config)

    @classmethod
    def default(cls, name: str = DEFAULT_METHOD) -> MethodChoice:
        return cls(name, method_spec(name).config_class())


@dataclass
class Recipe:
    name: str = "recipe"
    description: str = ""
    seed: int = 0
    imports: list[str] = field(default_factory=list)
    data: DataSection = field(default_factory=DataSection)
    model: dict[str, Any] = field(default_factory=lambda: {"name": "mlp"})
    method: MethodChoice = field(default_factory=MethodChoice.default)
    schedule: Schedule = field(default_factory=Schedule)
    regime: RegimeSection = field(default_factory=RegimeSection)
    sources: list[DataSection] = field(default_factory=list)

    @property
    def data_sections(self) -> list[DataSection]:
        """Every data set the run trains on: ``[data]``, then each ``[[sources]]``."""
        return [self.data, *self.sources]

    def describe_data(self) -> str:
        """``dataset with bias B`` of each data set, joined by ``+``."""
        return " + ".join(f"{d.dataset} with bias {d.bias}" for d in self.data_sections)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: asdict(getattr(self, f.name)) if f.name in ("data", "schedule", "regime")
               else getattr(self, f.name) for f in fields(self)}
        out["method"] = config_dict(self.method.name, self.method.config)
        out["sources"] = [asdict(d) for d in self.sources]
        return out

    def with_method(self, name: str) -> Recipe:
        """The same run, on the same data (the same meta set held out), with method ``name``
        at its default config (a baseline); a semi-supervised baseline of a semi-supervised
        recipe (``fixmatch`` of ``fixmatch-meta``) keeps the recipe's semi-supervised
        settings (labelled samples per class, mu, lambda_u, threshold, views)."""
        method = self.method.build()
        data, *sources = [replace(d, meta_per_class=self.held_out_per_class(method, section=d))
                          for d in self.data_sections]
        choice = MethodChoice.default(name)
        if isinstance(choice.config, SemiSupervisedConfig) and isinstance(self.method.config,
                                                                           SemiSupervisedConfig):
            shared = {f.name: getattr(self.method.config, f.name) for f in fields(SemiSupervisedConfig)}
            choice = MethodChoice(name, replace(choice.config, **shared))
        return Recipe(self.name, self.description, self.seed, self.imports, data, self.model,
                      choice, self.schedule, self.regime, sources)

    def held_out_per_class(self, method: Method | None = None, *, section: DataSection | None = None) -> int:
        """Clean samples per class held out of ``section`` (default ``[data]``) as the meta set:
        its ``meta_per_class``, else what the method takes (``method``: the recipe's method,
        when already built)."""
        section = section or self.data
        if section.meta_per_class is not None:
            return section.meta_per_class
        return (method or self.method.build()).clean_meta_per_class

    def validate(self, where: str | None = None) -> None:
        """Check values the types alone do not; errors name ``where`` (default: the recipe)."""
        where = where or f"recipe {self.name!r}"
        try:
            spec = method_spec(self.method.name)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        if not isinstance(self.method.config, spec.config_class):
            raise ValueError(f"{where}: the config of method {self.method.name!r} must be a "
                             f"{spec.config_class.__name__}")
        if "name" not in self.model:
            raise ValueError(f"{where}: [model] needs a name")
        if self.schedule.epochs < 1 or self.schedule.batch_size < 1:
            raise ValueError(f"{where}: schedule.epochs and schedule.batch_size must be >= 1")
        if any(d.meta_per_class is not None and d.meta_per_class < 0 for d in self.data_sections):
            raise ValueError(f"{where}: meta_per_class must be >= 0 ([data] and each [[sources]])")
        if self.sources and (self.regime.name != "supervised"
                             or isinstance(self.method.config, SemiSupervisedConfig)):
            raise ValueError(f"{where}: [[sources]] (multi-source training) takes supervised methods "
                             f"only, not regime {self.regime.name!r} with method {self.method.name!r}")
        if self.schedule.warmup_epochs < 0 or self.schedule.lr <= 0:
            raise ValueError(f"{where}: schedule.warmup_epochs must be >= 0 and schedule.lr > 0")
        if self.regime.name == "partial" and self.held_out_per_class() > 0:
            raise ValueError(f"{where}: partial-label data has no clean labels to hold out as a meta "
                             "set: use meta.source = 'train' (CMW-Net §4.2) or 'singletons'")
        meta = getattr(self.method.config, "meta", None)  # read, not built: building may load files
        if self.regime.name != "partial" and getattr(meta, "source", None) == "singletons":
            raise ValueError(f"{where}: meta.source = 'singletons' (one-label candidate sets) needs "
                             "regime.name = 'partial'")
        check = getattr(self.method.config, "validate", None)
        if check is not None:
            try:
                check(self.schedule)
            except ValueError as err:
                raise ValueError(f"{where}: {err}") from None


def _method_choice(table: dict[str, Any], legacy_meta: Any, where: str) -> MethodChoice:
    """The ``[method]`` table (plus a top-level ``[meta]``) validated by the method's config."""
    if not isinstance(table, dict):
        raise ValueError(f"{where}: [method] must be a table")
    table = dict(table)
    name = table.pop("name", DEFAULT_METHOD)
    if not isinstance(name, str):
        raise ValueError(f"{where}: method.name = {name!r} must be a string")
    try:
        spec = method_spec(name)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    if legacy_meta is not None:
        if "meta" not in {f.name for f in fields(spec.config_class)}:
            raise ValueError(f"{where}: [meta] is for meta-learning methods; method {name!r} takes none")
        if "meta" in table:
            raise ValueError(f"{where}: give the meta options once, in [meta] or in [method.meta]")
        table["meta"] = legacy_meta
    return MethodChoice(name, spec.parse(table, where))


def _import_plugins(modules: Any, where: str) -> None:
    """Import the recipe's ``imports`` (modules that register methods or estimators)."""
    if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
        raise ValueError(f"{where}: imports must be a list of module names")
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ValueError(f"{where}: imports: cannot import {module!r} ({err})") from None


def recipe_from_dict(table: dict[str, Any], where: str = "recipe") -> Recipe:
    """Build and validate a recipe from a parsed TOML table."""
    table = dict(table)
    _import_plugins(table.get("imports", []), where)
    method = _method_choice(table.pop("method", {}), table.pop("meta", None), where)
    recipe = build_dataclass(Recipe, table, "", where)
    recipe.method = method
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
    _switch_method(table, overrides or [])
    for item in overrides or []:
        _apply_override(table, item)
    table.setdefault("name", path.stem)
    try:
        return recipe_from_dict(table, where=str(path))
    except ValueError as err:
        blamed = [item for item in overrides or [] if _override_key(item) in str(err)]
        if blamed:  # the value came from the command line, not from the file
            reason = str(err).removeprefix(f"{path}: ")
            raise ValueError(f"--set {blamed[-1]}: {reason}") from None
        raise


def _override_key(item: str) -> str:
    """The last part of an override's key (``meta_lr`` for ``meta.meta_lr=1e-4``), as errors name it."""
    return item.partition("=")[0].strip().split(".")[-1]


def _switch_method(table: dict[str, Any], overrides: list[str]) -> None:
    """``--set method.name=OTHER`` switches the method: the file's ``[method]`` keys belong to
    the file's method and are dropped (set the new method's with more ``--set method.KEY=``);
    its ``[meta]`` table is kept for a new method that takes one, less the keys it does not
    take (e.g. ``meta_lr`` for ``l2rw``); otherwise it is dropped and the old method's clean
    meta set stays held out (``data.meta_per_class``), so that a baseline trains on the
    same data."""
    names = [item.partition("=")[2].strip().strip('"') for item in overrides
             if item.partition("=")[0].strip() == "method.name"]
    method = table.get("method", {})
    if not names or not isinstance(method, dict) or method.get("name", DEFAULT_METHOD) == names[-1]:
        return
    table["method"] = {}
    try:
        old_class = method_spec(method.get("name", DEFAULT_METHOD)).config_class
        old_meta = typing.get_type_hints(old_class).get("meta")
        meta_class = typing.get_type_hints(method_spec(names[-1]).config_class).get("meta")
    except ValueError:
        return  # an unknown name is reported when the recipe is built
    meta = table.pop("meta", None)
    if meta_class is not None and isinstance(meta, dict):
        known = {f.name for f in fields(meta_class)}
        table["meta"] = {k: v for k, v in meta.items() if k in known}
    elif old_meta is not None:  # keep the data identical: hold out the old method's meta set
        old = build_dataclass(old_meta, meta if isinstance(meta, dict) else {}, "meta.", "recipe")
        data = table.setdefault("data", {})
        if isinstance(data, dict) and old.source == "clean":
            data.setdefault("meta_per_class", old.per_class)


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

