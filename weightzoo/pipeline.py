"""End-to-end runs: prepare biased data, meta-train a weighter from a recipe, apply a frozen
weighter to a new dataset against baselines.  The CLI's ``train``/``apply``/``demo`` are
thin wrappers over :func:`train_recipe` and :func:`apply_weighter`.

Each run directory gets ``metrics.json`` (per-epoch history and final metrics) and
``run.json`` (the resolved configuration, data and bias report), written last and
atomically, so a directory with ``metrics.json`` is a complete run.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from weightzoo import distributed
from weightzoo.artifact import CURVE_NAME, save_weighter
from weightzoo.bias import BiasedData, inject_bias
from weightzoo.data import DataSplits, load_dataset
from weightzoo.engine import Schedule, Strategy, Trainer, TrainingSet
from weightzoo.families import TaskFamilies
from weightzoo.hub import load_pretrained_weighter
from weightzoo.metaset import balanced_clean_indices
from weightzoo.models import build_model
from weightzoo.recipe import Recipe
from weightzoo.strategies import FrozenWeighting, MetaWeighting, PlainLoss
from weightzoo.weighters import CMWNet, WeighterConfig, build_weighter

METRICS_NAME = "metrics.json"
RUN_NAME = "run.json"
WEIGHTER_DIR = "weighter"


@dataclass
class PreparedData:
    """The training set after holding out the meta set and injecting the bias."""

    splits: DataSplits
    train: TrainingSet
    bias: BiasedData
    meta_x: torch.Tensor | None
    meta_y: torch.Tensor | None

    def report(self) -> dict[str, Any]:
        return {
            "dataset": self.splits.name, "source": self.splits.source,
            "num_classes": self.splits.num_classes, "input_shape": list(self.splits.input_shape),
            "n_train": len(self.train.y), "n_test": len(self.train.test_y),
            "n_meta": 0 if self.meta_y is None else len(self.meta_y),
            "class_counts": self.train.class_counts.tolist(), "bias": self.bias.report,
        }


def prepare_data(
    dataset: str, bias: str, *, seed: int, root: str | None = None, test_fraction: float = 0.2,
    class_map: dict[int, int] | None = None, meta_per_class: int = 0,
) -> PreparedData:
    """Load ``dataset``, hold out ``meta_per_class`` clean samples per class as the meta set
    (before any bias), then inject ``bias`` into the rest (seeded)."""
    splits = load_dataset(dataset, root=root, seed=seed, test_fraction=test_fraction)
    x, y = splits.train_x, splits.train_y
    meta_x = meta_y = None
    if meta_per_class > 0:
        meta_idx = balanced_clean_indices(y, meta_per_class, seed)
        keep = torch.ones(len(y), dtype=torch.bool)
        keep[meta_idx] = False
        meta_x, meta_y = x[meta_idx], y[meta_idx]
        x, y = x[keep], y[keep]
    biased = inject_bias(x, y, splits.num_classes, bias, seed, class_map=class_map, dataset=splits.name)
    train = TrainingSet(
        x=x[biased.indices], y=biased.labels, test_x=splits.test_x, test_y=splits.test_y,
        num_classes=splits.num_classes, clean_y=biased.clean_labels,
    )
    return PreparedData(splits, train, biased, meta_x, meta_y)


def check_training_labels(train: TrainingSet) -> None:
    """Refuse a training set with an empty class: it cannot be learned or weighted."""
    counts = train.class_counts
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        raise ValueError(
            f"class {int(empty[0])} has no training samples ({empty.size} empty of "
            f"{len(counts)}); check the labels or the bias (e.g. a long-tail factor too large)"
        )


def build_checked_model(model_cfg: dict[str, Any], splits: DataSplits, seed: int) -> nn.Module:
    """Seeded model; raises if its output width differs from the number of classes."""
    options = {k: v for k, v in model_cfg.items() if k != "name"}
    torch.manual_seed(seed)
    model = build_model(model_cfg["name"], splits.num_classes, splits.input_shape, **options)
    model.eval()
    try:
        with torch.no_grad():
            out = model(splits.train_x[:2])
    except (RuntimeError, ValueError, TypeError) as err:
        raise ValueError(
            f"model {model_cfg['name']!r} fails on inputs of shape {tuple(splits.input_shape)} "
            f"from {splits.name} ({err})"
        ) from err
    model.train()
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"model {model_cfg['name']!r} returns {type(out).__name__}, not a logits tensor")
    if out.dim() != 2 or out.shape[1] != splits.num_classes:
        raise ValueError(
            f"model {model_cfg['name']!r} outputs shape {tuple(out.shape[1:])}, but the data "
            f"has {splits.num_classes} classes"
        )
    return model


def json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_json(path: Path, data: Any) -> None:
    """Atomic JSON write (NaN/inf become null)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(json_safe(data), f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def final_metrics(history: list[dict[str, Any]], last_k: int = 5) -> dict[str, Any]:
    """Summary of a history: last-epoch metrics, best and mean-of-last-k test accuracy."""
    last = history[-1]
    accs = [row["test_acc"] for row in history]
    return {
        "test_acc": last["test_acc"], "best_test_acc": max(accs),
        f"mean_last{min(last_k, len(accs))}_test_acc": float(np.mean(accs[-last_k:])),
        "head_acc": last["head_acc"], "medium_acc": last["medium_acc"], "tail_acc": last["tail_acc"],
        "per_class_acc": last["per_class_acc"], "epochs": len(history),
    }


def environment() -> dict[str, str]:
    return {"torch": torch.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "cuda": str(torch.cuda.is_available())}


# ----------------------------------------------------------------------------------------
def _new_weighter(recipe: Recipe, data: PreparedData) -> CMWNet:
    method = recipe.method
    kind = method.name
    config = WeighterConfig(
        kind=kind, hidden=method.hidden, num_families=1 if kind == "mwnet" else method.num_families,
        input_norm=method.input_norm, normalization=method.normalization, base_loss="ce",
        source_num_classes=data.splits.num_classes,
    )
    torch.manual_seed(recipe.seed)
    return build_weighter(config)


def make_strategy(recipe: Recipe, data: PreparedData) -> tuple[Strategy, CMWNet | None]:
    """The recipe's strategy, and the weighter it meta-learns (None for baselines)."""
    if not recipe.is_meta:
        return PlainLoss(recipe.method.name, **recipe.method.loss_params), None
    weighter = _new_weighter(recipe, data)
    strategy = MetaWeighting(
        weighter, recipe.meta, data.meta_x, data.meta_y, family_seed=recipe.seed
    )
    return strategy, weighter


def _weighter_metadata(
    recipe: Recipe, data: PreparedData, families: TaskFamilies, metrics: dict[str, Any],
    command: str | None, baseline: dict[str, Any] | None,
) -> dict[str, Any]:
    bias = data.bias.report
    return json_safe({
        "name": recipe.name, "description": recipe.description,
        "source": {"dataset": data.splits.name, "bias": bias["spec"], "bias_report": bias,
                   "n_train": len(data.train.y), "n_meta": data.report()["n_meta"]},
        "method": {"name": recipe.method.name, "meta": asdict(recipe.meta),
                   "schedule": asdict(recipe.schedule), "model": recipe.model},
        "families": {"centers": list(families.centers),
                     "family_of_class": families.family_of_class.cpu().tolist()},
        "metrics": {k: v for k, v in metrics.items() if k != "per_class_acc"},
        "baseline": baseline or {}, "command": command, "seed": recipe.seed,
    })


def train_recipe(
    recipe: Recipe, out_dir: str | Path, *, device: str | None = None, resume: bool = False,
    progress: bool = True, command: str | None = None, baseline: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train ``recipe`` into ``out_dir``; returns the final metrics.

    Writes ``checkpoint.pt`` every epoch, then ``weighter/`` (meta methods), ``curve.png``,
    ``run.json`` and ``metrics.json``.  ``baseline``: CE metrics on the same data, recorded
    in the weighter's card when known.
    """
    out = Path(out_dir)
    if (out / METRICS_NAME).exists() and not resume:
        raise FileExistsError(f"{out} already holds a finished run; pick another --out")
    data = prepare_data(
        recipe.data.dataset, recipe.data.bias, seed=recipe.seed, root=recipe.data.root,
        test_fraction=recipe.data.test_fraction,
        class_map={int(k): v for k, v in (recipe.data.class_map or {}).items()} or None,
        meta_per_class=recipe.meta.per_class if recipe.meta.source == "clean" else 0,
    )
    check_training_labels(data.train)
    model = build_checked_model(recipe.model, data.splits, recipe.seed)
    strategy, weighter = make_strategy(recipe, data)
    trainer = Trainer(
        model, data.train, recipe.schedule, device=device, seed=recipe.seed, out_dir=out,
        progress=progress, desc=f"{recipe.name} [{recipe.method.name}]",
    )
    history = trainer.fit(strategy, resume=resume)
    metrics = final_metrics(history)
    if weighter is not None:
        assert isinstance(strategy, MetaWeighting) and strategy.families is not None
        weighter.config.metadata = _weighter_metadata(
            recipe, data, strategy.families, metrics, command, baseline
        )
        save_weighter(weighter.cpu(), out / WEIGHTER_DIR)
        shutil.copyfile(out / WEIGHTER_DIR / CURVE_NAME, out / CURVE_NAME)
    write_json(out / RUN_NAME, {
        "recipe": recipe.to_dict(), "data": data.report(), "command": command,
        "device": str(trainer.device), "environment": environment(),
    })
    write_json(out / METRICS_NAME, {"method": recipe.method.name, "final": metrics, "history": history})
    return metrics


# ----------------------------------------------------------------------------------------
def apply_weighter(
    weighter_name: str, out_dir: str | Path, *, dataset: str, bias: str = "none",
    model: dict[str, Any] | None = None, schedule: Schedule | None = None, seed: int = 0,
    baselines: tuple[str, ...] = (), root: str | None = None, device: str | None = None,
    resume: bool = False, progress: bool = True, weights_report: bool = False,
    revision: str | None = None, command: str | None = None,
) -> dict[str, Any]:
    """Train on a new biased dataset with the frozen weighter and with each baseline (same
    data, model, schedule and seed); returns the comparison and writes it to
    ``comparison.json``.  Every input is validated before anything is written."""
    model = model or {"name": "mlp"}
    schedule = schedule or Schedule()
    if schedule.epochs < 1 or schedule.batch_size < 1:
        raise ValueError("epochs and batch size must be >= 1")
    if schedule.warmup_epochs >= schedule.epochs:
        raise ValueError(
            f"warmup_epochs ({schedule.warmup_epochs}) must be less than epochs ({schedule.epochs}), "
            "or the weighter is never applied"
        )
    weighter = load_pretrained_weighter(weighter_name, revision=revision)
    data = prepare_data(dataset, bias, seed=seed, root=root)
    check_training_labels(data.train)
    build_checked_model(model, data.splits, seed)
    out = Path(out_dir)
    if (out / "comparison.json").exists() and not resume:
        raise FileExistsError(f"{out} already holds a finished comparison; pick another --out")
    rank, _ = distributed.rank_and_world()
    runs: dict[str, dict[str, Any]] = {}
    sample_weights = None
    for method in ("weighter", *baselines):
        strategy = FrozenWeighting(weighter, family_seed=seed) if method == "weighter" else PlainLoss(method)
        trainer = Trainer(
            build_checked_model(model, data.splits, seed), data.train, schedule, device=device,
            seed=seed, out_dir=out / method, progress=progress,
            record_weights=weights_report and method == "weighter", desc=f"apply [{method}]",
        )
        history = trainer.fit(strategy, resume=resume)
        runs[method] = final_metrics(history)
        if rank == 0:
            write_json(out / method / METRICS_NAME, {"method": method, "final": runs[method],
                                                     "history": history})
        if method == "weighter":
            sample_weights = trainer.sample_weights
    comparison = {
        "weighter": weighter_name, "weighter_config": weighter.config.to_dict(),
        "data": data.report(), "model": model, "schedule": asdict(schedule), "seed": seed,
        "runs": {m: {k: v for k, v in r.items() if k != "per_class_acc"} for m, r in runs.items()},
        "gain_over_ce": (runs["weighter"]["test_acc"] - runs["ce"]["test_acc"]) if "ce" in runs else None,
        "command": command, "environment": environment(),
    }
    if sample_weights is not None and rank == 0:
        comparison["weights"] = _write_weights_report(out / "weights.csv", data, sample_weights)
    if rank == 0:
        write_json(out / "comparison.json", comparison)
    return comparison


def _write_weights_report(path: Path, data: PreparedData, weights: torch.Tensor) -> dict[str, Any]:
    """Per-sample last weights with clean/noisy flags; returns the mean weight of each group."""
    noisy = data.bias.is_noisy
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        f.write("index,label,clean_label,noisy,weight\n")
        for i in range(len(weights)):
            f.write(f"{i},{int(data.train.y[i])},{int(data.bias.clean_labels[i])},"
                    f"{int(noisy[i])},{float(weights[i]):.6f}\n")
    finite = torch.isfinite(weights)
    summary = {"path": path.name}
    for name, mask in (("clean", ~noisy & finite), ("noisy", noisy & finite)):
        summary[f"mean_weight_{name}"] = float(weights[mask].mean()) if bool(mask.any()) else None
    return summary


def train_with_baselines(
    recipe: Recipe, out_dir: str | Path, baselines: tuple[str, ...] = (), **kwargs: Any,
) -> dict[str, dict[str, Any]]:
    """Train each baseline method on identical data and seed (into ``out/baselines/NAME``),
    then the recipe itself; the CE baseline's metrics go into the weighter's card.
    Returns final metrics by method name (the recipe's under its method name)."""
    results: dict[str, dict[str, Any]] = {}
    for name in baselines:
        baseline = replace(recipe, method=replace(recipe.method, name=name))
        baseline.validate()
        results[name] = train_recipe(baseline, Path(out_dir) / "baselines" / name, **kwargs)
    ce = results.get("ce")
    summary = None if ce is None else {k: v for k, v in ce.items() if k != "per_class_acc"}
    results[recipe.method.name] = train_recipe(recipe, out_dir, baseline=summary, **kwargs)
    return results
