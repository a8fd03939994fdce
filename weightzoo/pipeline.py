"""End-to-end runs: prepare biased data, meta-train a weighter from a recipe, apply a frozen
weighter to a new dataset against baselines.  The CLI's ``train``/``apply``/``demo`` are
thin wrappers over :func:`train_recipe` and :func:`apply_weighter`.

Each run directory gets ``metrics.json`` (per-epoch history and final metrics) and
``run.json`` (the resolved configuration, data and bias report), written last and
atomically, so a directory with ``metrics.json`` is a complete run.
"""

from __future__ import annotations

import os
import platform
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from weightzoo import distributed
from weightzoo.artifact.curve import load_pyplot
from weightzoo.artifact.format import CURVE_NAME, Artifact, Provenance, save_artifact
from weightzoo.artifact.hub import load_pretrained
from weightzoo.atomic import atomic_write, write_json, write_text
from weightzoo.bilevel.metaset import balanced_clean_indices
from weightzoo.data.bias import BiasedData, inject_bias
from weightzoo.data.partial import draw_from_sets, set_report
from weightzoo.data.sources import DataSplits, load_dataset
from weightzoo.methods.base import Method, RunContext, TrainedArtifact
from weightzoo.methods.fixmatch import FixMatch, FixMatchConfig, labeled_split
from weightzoo.methods.frozen import FrozenConfig, FrozenLoss, FrozenWeighting
from weightzoo.methods.proden import require_candidate_sets
from weightzoo.methods.registry import build_method
from weightzoo.models import build_model
from weightzoo.partial_regime import APPLY_REGIMES, STAGE1_DIR, proden_stage, singleton_meta_set
from weightzoo.recipe import DataSection, Recipe
from weightzoo.training.checkpoint import CHECKPOINT_NAME
from weightzoo.training.engine import Schedule, Trainer, TrainingSet
from weightzoo.training.joint import fit_jointly
from weightzoo.weighting.families import TaskFamilies
from weightzoo.weighting.learned_loss import LearnedRobustLoss

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
    if splits.train_candidates is not None:
        return _given_partial_labels(splits, bias, meta_per_class)
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
        num_classes=splits.num_classes, clean_y=biased.clean_labels, candidates=biased.candidates,
    )
    return PreparedData(splits, train, biased, meta_x, meta_y)


def _given_partial_labels(splits: DataSplits, bias: str, meta_per_class: int) -> PreparedData:
    """A data set that comes with candidate sets (an npz ``S``): no bias is injected, and no
    clean meta set can be held out; the true labels, when the file gave them, only reach
    reports."""
    if bias.strip().lower() not in ("", "none"):
        raise ValueError(f"{splits.name} comes with candidate sets (S); it takes no bias (got {bias!r})")
    if meta_per_class > 0:
        raise ValueError(f"{splits.name} has partial labels only: no clean meta set can be held out "
                         "(use meta.source = 'train')")
    sets = splits.train_candidates
    assert sets is not None
    drawn = draw_from_sets(sets.numpy(), np.random.default_rng(0))
    known = splits.train_labels_known
    clean = splits.train_y if known else None
    report = {"spec": "given", "candidate_sets": "from the data", "labels_known": known,
              **set_report(sets.numpy())}
    labels = torch.from_numpy(drawn)
    biased = BiasedData(
        indices=torch.arange(len(labels)), labels=labels,
        clean_labels=clean if clean is not None else labels,
        is_noisy=(labels != clean) if clean is not None else torch.zeros(len(labels), dtype=torch.bool),
        report=report, candidates=sets,
    )
    train = TrainingSet(x=splits.train_x, y=labels, test_x=splits.test_x, test_y=splits.test_y,
                        num_classes=splits.num_classes, clean_y=clean, candidates=sets)
    return PreparedData(splits, train, biased, None, None)


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


def environment() -> dict[str, str | int]:
    return {"torch": torch.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "cuda": str(torch.cuda.is_available()),
            "threads": torch.get_num_threads()}


# ----------------------------------------------------------------------------------------
def _source_record(data: PreparedData) -> dict[str, Any]:
    """A training data set as a weighter's card records it."""
    bias = data.bias.report
    return {"dataset": data.splits.name, "bias": bias["spec"], "bias_report": bias,
            "n_train": len(data.train.y), "n_meta": data.report()["n_meta"]}


def _families_record(families: TaskFamilies | None) -> dict[str, Any]:
    return {} if families is None else {
        "centers": list(families.centers), "family_of_class": families.family_of_class.cpu().tolist(),
        "reason": families.reason}


def _publish(
    out: Path, recipe: Recipe, method: Method, trained: TrainedArtifact, source: dict[str, Any],
    metrics: dict[str, Any], command: str | None, baseline: dict[str, Any] | None,
) -> None:
    """Write ``out/weighter`` (the artifact with its provenance) and ``out/curve.png``."""
    artifact = trained.artifact
    artifact.config.metadata = Provenance(
        name=recipe.name, description=recipe.description,
        source={**source, "regime": asdict(recipe.regime)},
        method={**recipe.to_dict()["method"], **method.provenance(), "schedule": asdict(recipe.schedule),
                "model": recipe.model},
        families=_families_record(trained.families),
        metrics={k: v for k, v in metrics.items() if k != "per_class_acc"},
        baseline=baseline or {}, command=command, seed=recipe.seed,
    ).to_metadata()
    save_artifact(artifact.cpu(), out / WEIGHTER_DIR)
    atomic_write(out / CURVE_NAME, lambda tmp: shutil.copyfile(out / WEIGHTER_DIR / CURVE_NAME, tmp))


def check_output_dir(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to destroy a previous run: an ``out`` that holds one needs ``resume`` (continue
    it) or ``overwrite`` (start afresh, replacing its files)."""
    if resume or overwrite or not out.exists():
        return
    previous = [n for n in (METRICS_NAME, CHECKPOINT_NAME, WEIGHTER_DIR, "comparison.json", STAGE1_DIR)
                if (out / n).exists()]
    if previous:
        raise FileExistsError(
            f"{out} already holds a run ({', '.join(previous)}); pass --resume to continue it, "
            "--overwrite to replace it, or pick another --out"
        )


def train_recipe(
    recipe: Recipe, out_dir: str | Path, *, device: str | None = None, resume: bool = False,
    overwrite: bool = False, progress: bool = True, command: str | None = None,
    baseline: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train ``recipe`` into ``out_dir``; returns the final metrics (in the partial regime
    with stage 1's under ``"proden"``).

    Writes ``checkpoint.pt`` every epoch, then ``weighter/`` (methods that learn a
    weighter), ``curve.png``, ``run.json`` and ``metrics.json``. An ``out_dir`` holding a
    previous run is refused unless ``resume`` or ``overwrite``. ``baseline``: CE metrics
    on the same data, recorded in the weighter's card when known.
    """
    out = Path(out_dir)
    check_output_dir(out, resume=resume, overwrite=overwrite)
    if recipe.sources:
        return _train_sources(recipe, out, device=device, resume=resume, progress=progress,
                              command=command, baseline=baseline)
    method = recipe.method.build()
    data = _prepare_section(recipe, recipe.data, method, recipe.seed, "data")
    if recipe.method.spec.publishes:
        load_pyplot()  # now, not while finalising (see load_pyplot)
    stage1 = None
    if recipe.regime.name == "partial":
        stage1 = proden_stage(
            build_checked_model(recipe.model, data.splits, recipe.seed), data, recipe.schedule,
            out / STAGE1_DIR, seed=recipe.seed, device=device, resume=resume, progress=progress,
            weighter=recipe.regime.proden_weighter,
        )
        candidates = data.train.candidates
        data = stage1.data
        if method.singleton_meta_per_class:
            assert candidates is not None
            data = singleton_meta_set(data, candidates, method.singleton_meta_per_class, recipe.seed)
        check_training_labels(data.train)
    model = build_checked_model(recipe.model, data.splits, recipe.seed)
    if stage1 is not None:
        model = stage1.init(model, recipe.regime.stage2_init)
    method.bind(RunContext(data.splits.num_classes, data.meta_x, data.meta_y, recipe.seed))
    trainer = Trainer(
        model, data.train, recipe.schedule, device=device, seed=recipe.seed, out_dir=out,
        progress=progress, desc=f"{recipe.name} [{recipe.method.name}]",
    )
    history = trainer.fit(method, resume=resume)
    metrics = final_metrics(history)
    returned = metrics if stage1 is None else {**metrics, "proden": final_metrics(stage1.history)}
    trained = method.trained_artifact()
    if distributed.rank_and_world()[0] != 0:  # rank 0 writes the run's files
        return returned
    if trained is not None:
        _publish(out, recipe, method, trained, _source_record(data), metrics, command, baseline)
    write_json(out / RUN_NAME, {
        "recipe": recipe.to_dict(), "data": data.report(), "command": command,
        "device": str(trainer.device), "environment": environment(),
    })
    results: dict[str, Any] = {"method": recipe.method.name, "final": metrics, "history": history}
    if stage1 is not None:
        results["proden"] = {"final": returned["proden"], "history": stage1.history,
                             **data.bias.report["proden"]}
    write_json(out / METRICS_NAME, results)
    return returned


def _prepare_section(
    recipe: Recipe, section: DataSection, method: Method, seed: int, where: str,
) -> PreparedData:
    """A recipe's data set (``[data]`` or a ``[[sources]]`` entry, named ``where`` in errors)
    with the method's meta set held out, its labels checked."""
    per_class = recipe.held_out_per_class(method, section=section)
    if 0 < method.clean_meta_per_class != per_class:
        raise ValueError(f"{where}.meta_per_class ({per_class}) differs from the "
                         f"{method.clean_meta_per_class} clean samples per class the method's meta set takes")
    data = prepare_data(
        section.dataset, section.bias, seed=seed, root=section.root, test_fraction=section.test_fraction,
        class_map={int(k): v for k, v in (section.class_map or {}).items()} or None,
        meta_per_class=per_class,
    )
    check_training_labels(data.train)
    return data


def _train_sources(
    recipe: Recipe, out: Path, *, device: str | None, resume: bool, progress: bool,
    command: str | None, baseline: dict[str, Any] | None,
) -> dict[str, Any]:
    """Multi-source training (``[[sources]]``): a model per data set, source i seeded with
    ``seed + i``, trained in turns by one joined method each (``weightzoo.training.joint``),
    one artifact. Returns the mean final metrics over the sources, with each source's under
    ``"sources"``."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # before any data is prepared
        raise ValueError("multi-source training ([[sources]]) runs in one process, not under torchrun")
    methods = [recipe.method.build() for _ in recipe.data_sections]
    prepared, trainers = [], []
    for i, (section, method) in enumerate(zip(recipe.data_sections, methods, strict=True)):
        seed = recipe.seed + i
        data = _prepare_section(recipe, section, method, seed, "data" if i == 0 else f"sources[{i - 1}]")
        method.bind(RunContext(data.splits.num_classes, data.meta_x, data.meta_y, seed))
        prepared.append(data)
        trainers.append(Trainer(
            build_checked_model(recipe.model, data.splits, seed), data.train, recipe.schedule,
            device=device, seed=seed, out_dir=out, progress=progress,
            desc=f"{recipe.name} [{recipe.method.name}] source {i} ({section.dataset})",
        ))
    if recipe.method.spec.publishes:
        load_pyplot()  # now, not while finalising (see load_pyplot)
    histories = fit_jointly(trainers, methods, out, resume=resume)
    finals = [final_metrics(history) for history in histories]
    per_source = [{"dataset": d.splits.name, "bias": d.bias.report["spec"], **{
        k: v for k, v in f.items() if k != "per_class_acc"}} for d, f in zip(prepared, finals, strict=True)]
    metrics = {**{k: float(np.nanmean([f[k] for f in finals])) for k, v in finals[0].items()
                  if isinstance(v, float)}, "epochs": finals[0]["epochs"], "sources": per_source}
    trained = [m.trained_artifact() for m in methods]  # one artifact, each source's families
    if trained[0] is not None:
        records = [{**_source_record(d), "families": _families_record(t.families if t else None)}
                   for d, t in zip(prepared, trained, strict=True)]
        source = {"dataset": " + ".join(dict.fromkeys(d.splits.name for d in prepared)),
                  "bias": " + ".join(r["bias"] for r in records), "sources": records}
        _publish(out, recipe, methods[0], TrainedArtifact(trained[0].artifact), source, metrics, command,
                 baseline)
    write_json(out / RUN_NAME, {
        "recipe": recipe.to_dict(), "data": [d.report() for d in prepared], "command": command,
        "device": str(trainers[0].device), "environment": environment(),
    })
    write_json(out / METRICS_NAME, {
        "method": recipe.method.name, "final": metrics,
        "sources": [{**s, "history": h} for s, h in zip(per_source, histories, strict=True)],
    })
    return metrics


# ----------------------------------------------------------------------------------------
def apply_weighter(
    weighter_name: str, out_dir: str | Path, *, dataset: str, bias: str = "none",
    model: dict[str, Any] | None = None, schedule: Schedule | None = None, seed: int = 0,
    baselines: tuple[str, ...] = (), root: str | None = None, device: str | None = None,
    resume: bool = False, overwrite: bool = False, progress: bool = True,
    weights_report: bool = False, revision: str | None = None, command: str | None = None,
    loss: str = "auto", regime: str = "supervised", stage2_init: str = "scratch",
    labeled_per_class: int = 4, artifact: Artifact | None = None,
) -> dict[str, Any]:
    """Train on a new biased dataset with the frozen weighter and with each baseline (same
    data, model, schedule and seed); returns the comparison and writes it to
    ``comparison.json``.  Every input is validated before anything is written; an
    ``out_dir`` holding a previous comparison needs ``resume`` or ``overwrite``. ``loss``:
    the weighted loss (``auto``: the one the weighter was trained with, or one of
    ``weightzoo.weighting.nets.BASE_LOSSES``).

    ``regime = "partial"``: PRODEN runs once on the candidate sets (``out/proden``; it is the
    ``proden`` baseline), then the weighter and the other baselines train on its predicted
    labels, starting from PRODEN's model (``stage2_init = "proden"``) or afresh
    (``"scratch"``); the comparison adds ``gain_over_proden``.

    ``regime = "fixmatch"``: semi-supervised training with ``labeled_per_class`` labelled
    samples per class; the weighter is FixMatch's mask (``fixmatch`` with the weighter) and
    the one baseline is ``fixmatch`` (its threshold mask); the comparison adds
    ``gain_over_fixmatch``.

    ``artifact``: ``weighter_name`` at ``revision`` already loaded by the caller (one load, so
    one revision of an unpinned Hub name); loaded here when not given."""
    model = model or {"name": "mlp"}
    schedule = schedule or Schedule()
    if schedule.epochs < 1 or schedule.batch_size < 1:
        raise ValueError("epochs and batch size must be >= 1")
    if schedule.warmup_epochs >= schedule.epochs:
        raise ValueError(
            f"warmup_epochs ({schedule.warmup_epochs}) must be less than epochs ({schedule.epochs}), "
            "or the weighter is never applied"
        )
    weighter = artifact if artifact is not None else load_pretrained(weighter_name, revision=revision)

    semi = FixMatchConfig(labeled_per_class=labeled_per_class, family_seed=seed)

    def frozen() -> Method:
        """The frozen artifact as a method: a weighter with its loss (or as FixMatch's mask),
        or a learned loss."""
        if isinstance(weighter, LearnedRobustLoss):
            if regime == "fixmatch":
                raise ValueError(f"{weighter_name} is a learned loss: it gives no weights to mask "
                                 "FixMatch's unlabelled loss with")
            return FrozenLoss(loss=weighter)
        if regime == "fixmatch":
            return FixMatch(semi, weighter=weighter)
        return FrozenWeighting(FrozenConfig(family_seed=seed, loss=loss), weighter=weighter)

    def baseline(name: str) -> Method:
        return FixMatch(semi) if regime == "fixmatch" else build_method(name)

    runner = frozen()  # refuses a loss the weighter cannot take, before any work
    if schedule.rebalance != "none":
        if regime != "supervised":
            raise ValueError(f"schedule.rebalance = {schedule.rebalance!r} is for supervised training, "
                             f"not the {regime} regime")
        if stuck := [name for name in baselines if not baseline(name).rebalances]:
            raise ValueError(f"schedule.rebalance = {schedule.rebalance!r}: the baseline(s) "
                             f"{', '.join(stuck)} do not support it")
    for method in (runner, *map(baseline, baselines)):  # what each trainer would refuse, now
        method.check_schedule(schedule)
    is_loss = isinstance(weighter, LearnedRobustLoss)  # a learned loss gives no sample weights
    data = prepare_data(dataset, bias, seed=seed, root=root)
    check_training_labels(data.train)
    build_checked_model(model, data.splits, seed)
    if regime not in APPLY_REGIMES:
        raise ValueError(f"unknown regime {regime!r}; one of {APPLY_REGIMES}")
    if regime == "partial":
        require_candidate_sets(data.train)  # before anything is written
    if regime == "fixmatch":
        others = sorted(set(baselines) - {"fixmatch"})
        if others:
            raise ValueError(f"the fixmatch regime compares with the baseline 'fixmatch' (its threshold "
                             f"mask) only, not {', '.join(others)}")
        labeled_split(data.train.y, labeled_per_class, data.train.num_classes, seed)
    out = Path(out_dir)
    check_output_dir(out, resume=resume, overwrite=overwrite)
    rank, _ = distributed.rank_and_world()
    runs: dict[str, dict[str, Any]] = {}
    sample_weights = families = None
    stage1 = None
    if regime == "partial":
        stage1 = proden_stage(build_checked_model(model, data.splits, seed), data, schedule,
                              out / STAGE1_DIR, seed=seed, device=device, resume=resume,
                              progress=progress)
        runs["proden"] = final_metrics(stage1.history)
        baselines = tuple(b for b in baselines if b != "proden")
        data = stage1.data
    for method in ("weighter", *baselines):
        runner = frozen() if method == "weighter" else baseline(method)
        net = build_checked_model(model, data.splits, seed)
        trainer = Trainer(
            net if stage1 is None else stage1.init(net, stage2_init), data.train, schedule, device=device,
            seed=seed, out_dir=out / method, progress=progress,
            record_weights=weights_report and method == "weighter" and not is_loss, desc=f"apply [{method}]",
        )
        history = trainer.fit(runner, resume=resume)
        runs[method] = final_metrics(history)
        if rank == 0:
            write_json(out / method / METRICS_NAME, {"method": method, "final": runs[method],
                                                     "history": history})
        if method == "weighter":
            sample_weights = trainer.sample_weights
            fitted = getattr(getattr(runner, "weighting", None), "families", None)  # a weighter's
            families = None if fitted is None else fitted.to_dict()
    comparison = {
        "weighter": weighter_name, "weighter_config": weighter.config.to_dict(),
        "data": data.report(), "model": model, "schedule": asdict(schedule), "seed": seed,
        "runs": {m: {k: v for k, v in r.items() if k != "per_class_acc"} for m, r in runs.items()},
        "gain_over_ce": (runs["weighter"]["test_acc"] - runs["ce"]["test_acc"]) if "ce" in runs else None,
        "regime": regime, "families": families,
        "command": command, "environment": environment(),
    }
    if regime == "partial":
        comparison["gain_over_proden"] = runs["weighter"]["test_acc"] - runs["proden"]["test_acc"]
    if regime == "fixmatch" and "fixmatch" in runs:
        comparison["gain_over_fixmatch"] = runs["weighter"]["test_acc"] - runs["fixmatch"]["test_acc"]
        comparison["labeled_per_class"] = labeled_per_class
    if sample_weights is not None and rank == 0:
        comparison["weights"] = _write_weights_report(out / "weights.csv", data, sample_weights)
    if rank == 0:
        write_json(out / "comparison.json", comparison)
    return comparison


def _write_weights_report(path: Path, data: PreparedData, weights: torch.Tensor) -> dict[str, Any]:
    """Per-sample last weights with clean/noisy flags; returns the mean weight of each group."""
    noisy = data.bias.is_noisy
    rows = ["index,label,clean_label,noisy,weight"] + [
        f"{i},{int(data.train.y[i])},{int(data.bias.clean_labels[i])},{int(noisy[i])},{float(weights[i]):.6f}"
        for i in range(len(weights))
    ]
    write_text(path, "\n".join(rows) + "\n")
    finite = torch.isfinite(weights)
    summary = {"path": path.name}
    for name, mask in (("clean", ~noisy & finite), ("noisy", noisy & finite)):
        summary[f"mean_weight_{name}"] = float(weights[mask].mean()) if bool(mask.any()) else None
    return summary


def train_with_baselines(
    recipe: Recipe, out_dir: str | Path, baselines: tuple[str, ...] = (), **kwargs: Any,
) -> dict[str, dict[str, Any]]:
    """Train each baseline method on identical data and seed (into ``out/baselines/NAME``),
    then the recipe itself; the CE baseline's metrics (else the first baseline's) go into the
    weighter's card.
    Returns final metrics by method name (the recipe's under its method name). In the
    partial regime the first row is stage 1 (``proden``), the others are stage 2 on its
    predicted labels (``proden+NAME``)."""
    partial = recipe.regime.name == "partial"
    results: dict[str, dict[str, Any]] = {}
    for name in baselines:
        if partial and name == "proden":
            continue  # stage 1 of every partial-regime run
        baseline = recipe.with_method(name)
        baseline.validate()
        results[name] = train_recipe(baseline, Path(out_dir) / "baselines" / name, **kwargs)
    reference = "ce" if "ce" in results else next(iter(results), None)  # recorded in the card
    summary = None if reference is None else {
        "method": reference, **{k: v for k, v in results[reference].items() if k != "per_class_acc"}}
    results[recipe.method.name] = train_recipe(recipe, out_dir, baseline=summary, **kwargs)
    if not partial:
        return results
    stage2 = {f"proden+{name}": {k: v for k, v in row.items() if k != "proden"}
              for name, row in results.items()}
    return {"proden": results[recipe.method.name]["proden"], **stage2}
