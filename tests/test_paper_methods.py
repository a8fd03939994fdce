"""The papers' other training methods: L2RW (Ren et al. 2018) and CMW-Net-SL (frozen and
meta-trained)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from weightzoo.artifact.format import load_artifact
from weightzoo.bilevel.estimators import BilevelProblem, build_estimator
from weightzoo.cli.main import cli
from weightzoo.methods.frozen import FrozenConfig, FrozenWeighting
from weightzoo.methods.l2rw import l2rw_weights
from weightzoo.pipeline import WEIGHTER_DIR, apply_weighter, train_recipe
from weightzoo.recipe import load_recipe
from weightzoo.training.engine import Schedule
from weightzoo.weighting.families import TaskFamilies
from weightzoo.weighting.nets import CMWNet, MWNet
from weightzoo.weighting.reduction import LossTerm, total_loss
from weightzoo.weighting.soft_labels import soft_label_terms
from weightzoo.weighting.weighted_loss import WeightedLoss

SHORT = ["schedule.epochs=2", "schedule.milestones=[]", "model.hidden=[32]", "schedule.warmup_epochs=0"]


# --- L2RW --------------------------------------------------------------------------------


def test_l2rw_weights_are_clipped_and_normalised() -> None:
    w = l2rw_weights(torch.tensor([-2.0, 0.5, -1.0, -1.0]))
    assert torch.allclose(w, torch.tensor([0.5, 0.0, 0.25, 0.25])) and float(w.sum()) == pytest.approx(1.0)
    none_helps = l2rw_weights(torch.tensor([0.1, 0.0, 3.0]))
    assert torch.equal(none_helps, torch.zeros(3))  # the zero-sum guard: no step on this batch


@pytest.mark.parametrize("estimator", ["exact", "jvp"])
def test_l2rw_meta_gradient_is_minus_lr_times_gradient_similarity(estimator: str) -> None:
    """At eps = 0 the virtual step is theta itself, so dL^meta/deps_i = -lr/B grad l_i . grad L^meta."""
    torch.manual_seed(0)
    model = nn.Linear(5, 3).double()
    x, y = torch.randn(6, 5, dtype=torch.float64), torch.randint(0, 3, (6,))
    mx, my = torch.randn(4, 5, dtype=torch.float64), torch.randint(0, 3, (4,))
    eps = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    problem = BilevelProblem(
        model=model, x=x, meta_x=mx, meta_y=my, meta_loss_fn=F.cross_entropy, hyper_params=[eps], lr=0.3,
        objective=lambda z: {"ce": LossTerm(F.cross_entropy(z, y, reduction="none"), eps, "mean")},
    )
    grad = build_estimator(estimator)(problem).grads[0]
    meta_grad = torch.autograd.grad(F.cross_entropy(model(mx), my), list(model.parameters()))
    expected = []
    for i in range(6):
        per_sample = torch.autograd.grad(F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]),
                                         list(model.parameters()))
        expected.append(-0.3 / 6 * sum((a * b).sum() for a, b in zip(per_sample, meta_grad, strict=True)))
    torch.testing.assert_close(grad, torch.stack(expected), rtol=1e-10, atol=1e-12)


def test_l2rw_trains_for_real_and_publishes_nothing(tmp_path: Path) -> None:
    recipe = load_recipe("digits-sym40-mwnet", [*SHORT, "method.name=l2rw", "meta.meta_batch_size=50"])
    metrics = train_recipe(recipe, tmp_path / "l2rw", device="cpu", progress=False)
    assert metrics["test_acc"] > 0.3
    history = json.loads((tmp_path / "l2rw" / "metrics.json").read_text())["history"]
    assert all(0.0 < row["helpful_fraction"] <= 1.0 and row["meta_loss"] > 0 for row in history)
    assert not (tmp_path / "l2rw" / WEIGHTER_DIR).exists()


# --- CMW-Net-SL --------------------------------------------------------------------------


def test_soft_label_terms_are_the_papers_loss() -> None:
    torch.manual_seed(0)
    logits, y = torch.randn(6, 4), torch.randint(0, 4, (6,))
    soft = torch.softmax(torch.randn(6, 4), 1)
    v = torch.rand(6)

    def weights_of(losses: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        assert torch.equal(classes, y)
        return v

    ce_y = F.cross_entropy(logits, y, reduction="none")
    ce_p = -(soft * F.log_softmax(logits, 1)).sum(1)
    plain = total_loss(soft_label_terms(logits, y, soft, weights_of))
    torch.testing.assert_close(plain, (v * ce_y + (1 - v) * ce_p).mean())
    perm, lam = torch.tensor([3, 0, 5, 1, 2, 4]), 0.7
    mixed = total_loss(soft_label_terms(logits, y, soft, weights_of, lam, perm))
    ce_y2 = F.cross_entropy(logits, y[perm], reduction="none")
    ce_p2 = -(soft[perm] * F.log_softmax(logits, 1)).sum(1)
    partner = v[perm] * ce_y2 + (1 - v[perm]) * ce_p2
    expected = (lam * (v * ce_y + (1 - v) * ce_p) + (1 - lam) * partner).mean()
    torch.testing.assert_close(mixed, expected)


@pytest.fixture(scope="module")
def sl_weighter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sl") / "run"
    recipe = load_recipe("digits-sym40-cmwnet-sl", [*SHORT, "schedule.warmup_epochs=1", "schedule.epochs=3"])
    metrics = train_recipe(recipe, out, device="cpu", progress=False)
    assert metrics["test_acc"] > 0.5
    return out / WEIGHTER_DIR


def test_sl_artifact_records_its_loss(sl_weighter: Path) -> None:
    weighter = load_artifact(sl_weighter)
    assert weighter.config.base_loss == "sl" and weighter.config.normalization == "mean"
    method = weighter.config.metadata["method"]
    assert method["name"] == "cmwnet-sl" and method["teacher_decay"] == pytest.approx(0.997)
    assert FrozenWeighting(weighter=weighter).loss == "sl"  # frozen use defaults to its loss
    assert FrozenWeighting(FrozenConfig(loss="ce"), weighter=weighter).loss == "ce"
    with pytest.raises(ValueError, match="method.loss must be one of"):
        FrozenConfig(loss="focal")


def test_frozen_sl_weighter_applies_with_the_sl_loss(sl_weighter: Path, tmp_path: Path) -> None:
    result = apply_weighter(str(sl_weighter), tmp_path / "apply", dataset="digits", bias="symmetric:0.4",
                            model={"name": "mlp", "hidden": [32]}, seed=1, baselines=("ce",),
                            schedule=Schedule(epochs=2, warmup_epochs=1), progress=False)
    assert result["runs"]["weighter"]["test_acc"] > 0.3
    ckpt = torch.load(tmp_path / "apply" / "weighter" / "checkpoint.pt", weights_only=True)
    assert ckpt["run"]["method"] == "weighter:cmwnet:sl" and "teacher" in ckpt["method"]
    cli_run = CliRunner().invoke(cli, ["apply", str(sl_weighter), "--data", "digits", "--epochs", "2",
                                       "--loss", "ce", "--out", str(tmp_path / "ce"), "--no-progress"])
    assert cli_run.exit_code == 0, cli_run.output


def test_weighted_loss_soft_label_loss() -> None:
    torch.manual_seed(0)
    weighter = CMWNet(num_families=3, normalization="mean", base_loss="sl")
    counts = [5, 5, 20, 20, 80, 80]
    crit = WeightedLoss.for_data(weighter, class_counts=counts)
    logits = torch.randn(8, 6, requires_grad=True)
    y, soft = torch.randint(0, 6, (8,)), torch.softmax(torch.randn(8, 6), 1)
    loss = crit.soft_label_loss(logits, y, soft)
    families = TaskFamilies.fit(counts, 3).family_of_class[y]
    ce_y = F.cross_entropy(logits, y, reduction="none")
    v = weighter(ce_y, families, 6)
    expected = (v * ce_y + (1 - v) * -(soft * F.log_softmax(logits, 1)).sum(1)).mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and crit.last_weights is not None
    with pytest.raises(ValueError, match="soft targets"):
        crit.soft_label_loss(logits, y, soft[:, :3])
    mw = WeightedLoss.for_data(MWNet(), class_counts=counts)
    assert torch.isfinite(mw.soft_label_loss(logits, y, soft))


def test_frozen_methods_load_their_artifact_by_name(sl_weighter: Path) -> None:
    from weightzoo.methods.frozen import FrozenLoss, FrozenLossConfig

    method = FrozenWeighting(FrozenConfig(weighter=str(sl_weighter)))
    assert method.loss == "sl" and method.weighter.config.base_loss == "sl"
    with pytest.raises(ValueError, match="needs weighter = NAME"):
        FrozenWeighting(FrozenConfig())
    with pytest.raises(ValueError, match="needs loss = NAME"):
        FrozenLoss(FrozenLossConfig())
    with pytest.raises(TypeError, match="not a LearnedRobustLoss"):
        FrozenLoss(FrozenLossConfig(loss=str(sl_weighter)))


# --- a robust base loss under the weighter -------------------------------------------------


def test_weighting_term_weights_the_base_loss_at_the_samples_cross_entropy() -> None:
    from weightzoo.losses import per_sample_loss
    from weightzoo.weighting.sample_weighting import SampleWeighting

    torch.manual_seed(0)
    weighting = SampleWeighting.fit(CMWNet(num_families=2), [40, 40, 5, 5])
    logits, y = torch.randn(8, 4), torch.randint(0, 4, (8,))
    ce = F.cross_entropy(logits, y, reduction="none")
    expected_weights = weighting.weighter(ce, weighting.family_of_class[y], 4)
    for base in ("ce", "gce", "sce", "class-balanced"):
        term = weighting.term(base, logits, y, grad=True)
        # class-balanced: its class weights from the counts the families were fitted on
        extra = {"class_counts": [40, 40, 5, 5]} if base == "class-balanced" else {}
        torch.testing.assert_close(term.losses, per_sample_loss(base, logits, y, **extra))
        torch.testing.assert_close(term.weights, expected_weights)  # read at the CE, whatever the base
        assert term.weights.requires_grad and term.normalization == "sum"
        plain = weighting.term(base, logits, y, weighted=False)
        assert plain.weights is None and torch.equal(plain.losses, term.losses)
    assert not weighting.term("gce", logits, y).weights.requires_grad
    with pytest.raises(ValueError, match="base loss 'sl' is not one of"):
        weighting.term("sl", logits, y)


def test_base_loss_options_are_validated() -> None:
    from weightzoo.methods.meta_weighting import MetaWeightingConfig
    from weightzoo.methods.soft_labels import SoftLabelConfig

    assert MetaWeightingConfig(base_loss="sce").base_loss == "sce"
    with pytest.raises(ValueError, match="method.base_loss must be one of"):
        MetaWeightingConfig(base_loss="focal")
    with pytest.raises(ValueError, match="does not apply to cmwnet-sl"):
        SoftLabelConfig(base_loss="gce")
    with pytest.raises(ValueError, match="unknown base_loss"):
        CMWNet(base_loss="mae")
    with pytest.raises(ValueError, match="base_loss must be one of"):
        WeightedLoss(MWNet(), base_loss="sl")


@pytest.fixture(scope="module")
def gce_weighter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gce") / "run"
    recipe = load_recipe("digits-sym40-mwnet", [*SHORT, "schedule.warmup_epochs=1", "schedule.epochs=3",
                                                "method.base_loss=\"gce\""])
    metrics = train_recipe(recipe, out, device="cpu", progress=False)
    assert metrics["test_acc"] > 0.5
    return out / WEIGHTER_DIR


def test_a_weighter_meta_trained_over_gce_is_applied_over_gce(gce_weighter: Path, tmp_path: Path) -> None:
    from weightzoo.losses import per_sample_loss

    weighter = load_artifact(gce_weighter)
    assert weighter.config.base_loss == "gce" and weighter.config.metadata["method"]["base_loss"] == "gce"
    assert FrozenWeighting(weighter=weighter).loss == "gce"
    assert "weighted GCE" in (gce_weighter / "README.md").read_text()
    # drop-in use weights GCE at each sample's CE, unless told otherwise
    crit = WeightedLoss.for_data(weighter, class_counts=[30] * 10, warmup_epochs=0)
    torch.manual_seed(1)
    logits, y = torch.randn(16, 10), torch.randint(0, 10, (16,))
    w = weighter(F.cross_entropy(logits, y, reduction="none"), None, 10)
    gce = per_sample_loss("gce", logits, y)
    torch.testing.assert_close(crit(logits, y), (w * gce).sum() / w.sum())
    as_ce = WeightedLoss.for_data(weighter, class_counts=[30] * 10, warmup_epochs=0, base_loss="ce")
    ce = F.cross_entropy(logits, y, reduction="none")
    torch.testing.assert_close(as_ce(logits, y), (w * ce).sum() / w.sum())
    result = apply_weighter(str(gce_weighter), tmp_path / "apply", dataset="digits", bias="symmetric:0.4",
                            model={"name": "mlp", "hidden": [32]}, seed=1, baselines=(),
                            schedule=Schedule(epochs=2, warmup_epochs=1), progress=False)
    assert result["runs"]["weighter"]["test_acc"] > 0.3
    ckpt = torch.load(tmp_path / "apply" / "weighter" / "checkpoint.pt", weights_only=True)
    assert ckpt["run"]["method"] == "weighter:mwnet:gce"


@pytest.fixture(scope="module")
def class_balanced_weighter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cb") / "run"
    recipe = load_recipe("digits-longtail-mwnet", [*SHORT, "method.name=\"cmwnet\"", "method.num_families=2",
                                                   "method.normalization=\"mean\"",
                                                   "method.base_loss=\"class-balanced\""])
    train_recipe(recipe, out, device="cpu", progress=False)
    return out / WEIGHTER_DIR


def test_a_weighter_over_class_balanced_ce_balances_by_the_target_counts(
    class_balanced_weighter: Path, tmp_path: Path,
) -> None:
    from weightzoo.losses import class_balanced_weights

    weighter = load_artifact(class_balanced_weighter)
    assert weighter.config.base_loss == "class-balanced"
    assert FrozenWeighting(weighter=weighter).loss == "class-balanced"
    card = (class_balanced_weighter / "README.md").read_text()
    assert "weighted class-balanced CE" in card and "class counts of the data it is applied to" in card
    # the class weights come from the data it is applied to, not from the source's counts
    counts = [200, 200, 200, 8, 8, 8, 100, 100, 100, 4]
    crit = WeightedLoss.for_data(weighter, class_counts=counts, warmup_epochs=0)
    torch.manual_seed(2)
    logits, y = torch.randn(32, 10), torch.randint(0, 10, (32,))
    ce = F.cross_entropy(logits, y, reduction="none")
    w = weighter(ce, crit.family_of_class[y], 10)
    balanced = class_balanced_weights(counts).float()[y] * ce
    torch.testing.assert_close(crit(logits, y), (w * balanced).mean())
    assert not torch.allclose(balanced, ce)
    with pytest.raises(ValueError, match="class-balanced base loss .* pass class_counts= or labels="):
        WeightedLoss(weighter)
    with pytest.raises(ValueError, match="class-balanced base loss .* pass class_counts= or labels="):
        WeightedLoss.for_data(MWNet(base_loss="class-balanced"))  # MW-Net needs no families otherwise
    # frozen training balances by the training set's counts, not by the source's
    from types import SimpleNamespace

    from weightzoo.methods.base import Batch

    method = FrozenWeighting(weighter=weighter)
    trainer = SimpleNamespace(global_class_counts=lambda: np.array(counts), device=torch.device("cpu"),
                              model=lambda x: x, schedule=Schedule(epochs=2),
                              rebalanced=lambda losses, batch: losses)
    method.setup(trainer)  # type: ignore[arg-type]
    output = method.step(trainer, Batch(x=logits, y=y, index=torch.arange(32), epoch=1, iteration=0,  # type: ignore[arg-type]
                                        lr=0.1, warmup=False))
    torch.testing.assert_close(output.terms["ce"].losses, balanced)
    result = apply_weighter(str(class_balanced_weighter), tmp_path / "apply", dataset="digits",
                            bias="longtail:20", model={"name": "mlp", "hidden": [32]}, seed=1,
                            baselines=(), schedule=Schedule(epochs=2, warmup_epochs=1), progress=False)
    assert result["runs"]["weighter"]["test_acc"] > 0.3
    ckpt = torch.load(tmp_path / "apply" / "weighter" / "checkpoint.pt", weights_only=True)
    assert ckpt["run"]["method"] == "weighter:cmwnet:class-balanced"


def test_meta_training_over_class_balanced_ce_weights_it_in_every_step(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    from weightzoo.weighting.sample_weighting import SampleWeighting

    calls: list[tuple[str, bool, bool]] = []
    term = SampleWeighting.term

    def spy(self: SampleWeighting, base_loss: str, *args: object, grad: bool = False, weighted: bool = True,
            **kwargs: object) -> object:
        assert self.balance is not None  # the training set's class-balanced weights
        calls.append((base_loss, grad, weighted))
        return term(self, base_loss, *args, grad=grad, weighted=weighted, **kwargs)

    monkeypatch.setattr(SampleWeighting, "term", spy)
    recipe = load_recipe("digits-longtail-mwnet", [*SHORT, "schedule.epochs=1",
                                                   "method.base_loss=\"class-balanced\""])
    train_recipe(recipe, tmp_path / "run", device="cpu", progress=False)
    assert {base for base, _, _ in calls} == {"class-balanced"}
    assert (("class-balanced", True, True) in calls  # the look-ahead
            and ("class-balanced", False, True) in calls)  # the real step
