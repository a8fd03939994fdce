"""Multi-source meta-training: several (model, data) sources trained in turns, one weighter
meta-learned on all of them (``fit_jointly``, recipes with ``[[sources]]``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from weightzoo.artifact.format import Provenance, load_artifact
from weightzoo.cli.main import cli
from weightzoo.data.sources import load_dataset
from weightzoo.methods.base import RunContext
from weightzoo.methods.fixmatch import FixMatch, FixMatchMetaConfig
from weightzoo.methods.meta_weighting import MetaConfig, MetaWeighting, MetaWeightingConfig
from weightzoo.methods.plain import PlainLoss
from weightzoo.methods.robust_loss import AdaptiveRobustLoss, ARLConfig
from weightzoo.pipeline import METRICS_NAME, WEIGHTER_DIR, train_recipe
from weightzoo.recipe import load_recipe, recipe_from_dict
from weightzoo.training.checkpoint import CHECKPOINT_NAME
from weightzoo.training.engine import Schedule, Trainer, TrainingSet
from weightzoo.training.joint import fit_jointly
from weightzoo.weighting.families import TaskFamilies
from weightzoo.weighting.nets import CMWNet


def digits_source(offset: int, noise: float, classes_kept: int = 10) -> TrainingSet:
    """300 digits from ``offset``, a fraction ``noise`` of labels redrawn; with
    ``classes_kept`` < 10 the other classes keep 10 samples each (an imbalanced source)."""
    splits = load_dataset("digits", seed=0)
    x, y = splits.train_x[offset:offset + 300], splits.train_y[offset:offset + 300].clone()
    keep = torch.ones(len(y), dtype=torch.bool)
    for c in range(classes_kept, 10):
        keep[torch.nonzero(y == c).flatten()[10:]] = False
    x, y = x[keep], y[keep]
    gen = torch.Generator().manual_seed(offset)
    flip = torch.rand(len(y), generator=gen) < noise
    y[flip] = torch.randint(0, 10, (int(flip.sum()),), generator=gen)
    return TrainingSet(x=x, y=y, test_x=splits.test_x[:120], test_y=splits.test_y[:120], num_classes=10)


SOURCES = {"noisy": lambda: digits_source(0, 0.4), "imbalanced": lambda: digits_source(600, 0.0, 6)}


def meta_set() -> tuple[torch.Tensor, torch.Tensor]:
    splits = load_dataset("digits", seed=0)
    return splits.train_x[1000:1050], splits.train_y[1000:1050]


def method() -> MetaWeighting:
    torch.manual_seed(1)  # every source's method builds the same weighter; the lead's is kept
    meta_x, meta_y = meta_set()
    config = MetaWeightingConfig(normalization="mean", meta=MetaConfig(meta_lr=1e-2, meta_batch_size=40))
    return MetaWeighting(config, kind="cmwnet", weighter=CMWNet(hidden=16, num_families=3),
                         meta_x=meta_x, meta_y=meta_y)


def trainers(names: list[str], epochs: int, out: Path | None) -> list[Trainer]:
    result = []
    for i, name in enumerate(names):
        torch.manual_seed(10 + i)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(),
                                    torch.nn.Linear(32, 10))
        sched = Schedule(epochs=epochs, batch_size=50, lr=0.1, milestones=[2], warmup_epochs=1)
        result.append(Trainer(model, SOURCES[name](), sched, device="cpu", seed=7 + i, out_dir=out,
                              progress=False))
    return result


def joint(names: list[str], epochs: int = 3, out: Path | None = None,
          resume: bool = False) -> tuple[list[Trainer], list[MetaWeighting]]:
    torch.manual_seed(123)
    runs, methods = trainers(names, epochs, out), [method() for _ in names]
    fit_jointly(runs, methods, out, resume=resume)
    return runs, methods


def weighter_state(m: MetaWeighting) -> dict[str, torch.Tensor]:
    assert m.weighter is not None
    return {k: v.clone() for k, v in m.weighter.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_one_source_trains_exactly_as_the_single_trainer() -> None:
    torch.manual_seed(123)
    (alone,), single = trainers(["noisy"], 3, None), method()
    alone.fit(single)
    (jointly,), (joined,) = joint(["noisy"])
    assert same(alone.module.state_dict(), jointly.module.state_dict())
    assert same(weighter_state(single), weighter_state(joined))
    assert [r["test_acc"] for r in alone.history] == [r["test_acc"] for r in jointly.history]


def test_sources_meta_learn_one_weighter_with_one_optimizer() -> None:
    runs, methods = joint(["noisy", "imbalanced"])
    lead, other = methods
    assert other.weighter is lead.weighter and other.optimizer is lead.optimizer
    assert other.weighting is not None and other.weighting.weighter is lead.weighter
    # each source's meta step is one Adam update of the shared weighter: every non-warm-up
    # iteration of both sources counts
    meta_steps = sum(-(-len(t.data.y) // 50) * 2 for t in runs)
    assert lead.optimizer is not None
    steps = {int(s["step"]) for s in lead.optimizer.state_dict()["state"].values()}
    assert steps == {meta_steps}
    # families are each source's own, fitted on its class counts
    for trainer, m in zip(runs, methods, strict=True):
        assert m.weighting is not None
        fitted = TaskFamilies.fit(trainer.data.class_counts, 3, seed=m.family_seed)
        assert torch.equal(m.weighting.family_of_class, fitted.family_of_class)
    assert not torch.equal(lead.weighting.family_of_class, other.weighting.family_of_class)
    # the second source changed what the weighter learned
    _, (alone,) = joint(["noisy"])
    assert not same(weighter_state(alone), weighter_state(lead))


def test_resume_is_bit_identical(tmp_path: Path) -> None:
    runs, methods = joint(["noisy", "imbalanced"], epochs=3)
    joint(["noisy", "imbalanced"], epochs=2, out=tmp_path)  # "interrupted" after 2 epochs
    resumed, resumed_methods = joint(["noisy", "imbalanced"], epochs=3, out=tmp_path, resume=True)
    assert same(weighter_state(methods[0]), weighter_state(resumed_methods[0]))
    for a, b in zip(runs, resumed, strict=True):
        assert same(a.module.state_dict(), b.module.state_dict())
        assert [r["test_acc"] for r in a.history] == [r["test_acc"] for r in b.history]


def test_resume_refuses_another_runs_checkpoint(tmp_path: Path) -> None:
    joint(["noisy"], epochs=1, out=tmp_path)
    saved = (tmp_path / CHECKPOINT_NAME).read_bytes()
    with pytest.raises(ValueError, match=r"written by a run of 1 source\(s\), not of these 2"):
        joint(["noisy", "imbalanced"], epochs=2, out=tmp_path, resume=True)
    assert (tmp_path / CHECKPOINT_NAME).read_bytes() == saved  # nothing was lost
    single = trainers(["noisy"], 1, tmp_path / "single")[0]
    single.fit(PlainLoss("ce"))
    with pytest.raises(ValueError, match="written by a single-source run"):
        joint(["noisy", "imbalanced"], epochs=2, out=tmp_path / "single", resume=True)
    # and a single-source run refuses the multi-source checkpoint
    again = trainers(["noisy"], 2, tmp_path)[0]
    with pytest.raises(ValueError, match="a multi-source checkpoint"):
        again.fit(method(), resume=True)


def test_fit_jointly_rejects_inconsistent_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    runs = trainers(["noisy", "imbalanced"], 2, None)
    with pytest.raises(ValueError, match="one method per source"):
        fit_jointly(runs, [method()])
    shared = method()
    with pytest.raises(ValueError, match="its own trainer and its own method"):
        fit_jointly(runs, [shared, shared])
    other = method()
    other.config.meta.meta_lr = 1e-3
    with pytest.raises(ValueError, match="differ in class or config"):
        fit_jointly(runs, [method(), other])
    with pytest.raises(ValueError, match="differ in class or config"):
        fit_jointly(runs, [method(), PlainLoss("ce")])
    runs[1].data = TrainingSet(x=runs[1].data.x, y=runs[1].data.y % 5, test_x=runs[1].data.test_x,
                               test_y=runs[1].data.test_y % 5, num_classes=5)
    with pytest.raises(ValueError, match="one number of classes"):
        fit_jointly(runs, [method(), method()])
    runs[1].schedule.epochs = 3
    with pytest.raises(ValueError, match="differ in epochs"):
        fit_jointly(runs, [method(), method()])
    monkeypatch.setattr("weightzoo.distributed.rank_and_world", lambda: (0, 2))
    with pytest.raises(ValueError, match="not under torchrun"):
        fit_jointly(runs, [method(), method()])


def test_a_learned_loss_is_meta_learned_on_every_source() -> None:
    """arl: the sources train with one learned loss and one Adam state."""
    meta_x, meta_y = meta_set()
    arls = []
    for _ in range(2):
        arl = AdaptiveRobustLoss(ARLConfig(loss="gce", meta=MetaConfig(meta_lr=5e-2, meta_batch_size=40)))
        arl.bind(RunContext(10, meta_x, meta_y))
        arls.append(arl)
    runs = trainers(["noisy", "imbalanced"], 2, None)
    fit_jointly(runs, arls)
    assert arls[1].loss is arls[0].loss and arls[1].optimizer is arls[0].optimizer
    assert arls[0].optimizer is not None and arls[0].loss is not None
    meta_steps = sum(-(-len(t.data.y) // 50) for t in runs)  # every non-warm-up iteration
    assert {int(s["step"]) for s in arls[0].optimizer.state_dict()["state"].values()} == {meta_steps}
    assert arls[0].loss.hyperparameters()["q"] != pytest.approx(0.7)  # it moved from its start


def test_a_meta_learned_module_that_cannot_be_shared_is_refused() -> None:
    """FixMatch's meta-learned mask lives in the method, not in a shared weighter: it would be
    meta-learned on the first source only, so multi-source training refuses it."""
    masks = [FixMatch(FixMatchMetaConfig(hidden=8)) for _ in range(2)]
    with pytest.raises(ValueError, match="cannot meta-learn one module on several sources"):
        fit_jointly(trainers(["noisy", "imbalanced"], 2, None), masks)


# ----------------------------------------------------------------------------------------
# recipes with [[sources]]

RECIPE = {
    "name": "digits-two-sources", "seed": 0,
    "data": {"dataset": "digits", "bias": "symmetric:0.4"},
    "sources": [{"dataset": "digits", "bias": "longtail:10"}],
    "model": {"name": "mlp", "hidden": [32]},
    "method": {"name": "cmwnet", "normalization": "mean"},
    "meta": {"per_class": 5},
    "schedule": {"epochs": 2, "warmup_epochs": 1, "milestones": []},
}


def test_recipe_sources_parse_and_are_validated() -> None:
    recipe = recipe_from_dict(json.loads(json.dumps(RECIPE)))
    assert [d.bias for d in recipe.data_sections] == ["symmetric:0.4", "longtail:10"]
    assert recipe.to_dict()["sources"] == [{"dataset": "digits", "bias": "longtail:10", "root": None,
                                            "test_fraction": 0.2, "class_map": None,
                                            "meta_per_class": None}]
    baseline = recipe.with_method("ce")  # the same data sets, the same meta sets held out
    assert [(d.bias, d.meta_per_class) for d in baseline.data_sections] == [
        ("symmetric:0.4", 5), ("longtail:10", 5)]
    with pytest.raises(ValueError, match=r"unknown key\(s\) sources\[0\]\.biass"):
        recipe_from_dict({**RECIPE, "sources": [{"dataset": "digits", "biass": "x"}]})
    with pytest.raises(ValueError, match="array of tables"):
        recipe_from_dict({**RECIPE, "sources": ["digits"]})
    with pytest.raises(ValueError, match="supervised methods only"):
        recipe_from_dict({**RECIPE, "regime": {"name": "partial"}, "meta": {"source": "train"}})
    shipped = load_recipe("fmnist-multi-cmwnet")
    assert len(shipped.data_sections) == 4 and shipped.method.name == "cmwnet"
    overridden = load_recipe("digits-sym40-mwnet", ['sources=[{dataset="digits", bias="longtail:10"}]'])
    assert [d.bias for d in overridden.data_sections] == ["symmetric:0.4", "longtail:10"]


def test_train_recipe_publishes_one_weighter_with_every_source(tmp_path: Path) -> None:
    recipe = recipe_from_dict(json.loads(json.dumps(RECIPE)))
    metrics = train_recipe(recipe, tmp_path / "run", device="cpu", progress=False)
    assert [(s["dataset"], s["bias"]) for s in metrics["sources"]] == [
        ("digits", "symmetric:0.4"), ("digits", "longtail:10")]
    mean = (metrics["sources"][0]["test_acc"] + metrics["sources"][1]["test_acc"]) / 2
    assert metrics["test_acc"] == pytest.approx(mean)
    written = json.loads((tmp_path / "run" / METRICS_NAME).read_text(encoding="utf-8"))
    assert [len(s["history"]) for s in written["sources"]] == [2, 2]
    weighter = load_artifact(tmp_path / "run" / WEIGHTER_DIR)
    source = Provenance.from_metadata(weighter.config.metadata).source
    assert source["bias"] == "symmetric:0.4 + longtail:10"
    families = [s["families"] for s in source["sources"]]
    assert len(set(families[0]["family_of_class"])) == 1  # balanced noisy counts: one family
    assert len(set(families[1]["family_of_class"])) == 3  # long tail: K families
    card = (tmp_path / "run" / WEIGHTER_DIR / "README.md").read_text(encoding="utf-8")
    assert "longtail:10" in card and "symmetric:0.4" in card
    shown = CliRunner().invoke(cli, ["show", str(tmp_path / "run" / WEIGHTER_DIR)])
    assert "metrics (mean over sources)" in shown.output
    assert "source digits longtail:10: test acc" in shown.output
    checkpoint = tmp_path / "run" / CHECKPOINT_NAME
    written_at = checkpoint.stat().st_mtime_ns
    again = train_recipe(recipe, tmp_path / "run", device="cpu", progress=False, resume=True)
    assert again == metrics and checkpoint.stat().st_mtime_ns == written_at  # a finished run only reloads


def test_train_command_reports_each_source(tmp_path: Path) -> None:
    path = tmp_path / "two.toml"
    path.write_text("\n".join([
        'name = "two"', "[data]", 'dataset = "digits"', 'bias = "symmetric:0.4"',
        "[[sources]]", 'dataset = "digits"', 'bias = "longtail:10"',
        "[model]", 'name = "mlp"', "hidden = [32]", "[method]", 'name = "mwnet"',
        "[meta]", "per_class = 5", "[schedule]", "epochs = 2", "warmup_epochs = 1"]), encoding="utf-8")
    result = CliRunner().invoke(cli, ["train", str(path), "--out", str(tmp_path / "out"),
                                      "--baseline", "ce", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "digits with bias symmetric:0.4 + digits with bias longtail:10" in result.output
    assert "mwnet · digits longtail:10" in result.output and "ce · digits symmetric:0.4" in result.output
