"""Robust-loss baselines (polynomial soft weighting, bi-tempered) and adaptive robust losses
(meta-learned hyper-parameters): ranges, the artifact kind, training and frozen use."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from weightzoo import LearnedRobustLoss
from weightzoo.artifact.format import CONFIG_NAME, WEIGHTS_NAME, WeighterFileError, load_artifact
from weightzoo.bilevel.estimators import BilevelProblem, build_estimator
from weightzoo.losses import per_sample_loss, tempered_softmax
from weightzoo.pipeline import WEIGHTER_DIR, apply_weighter, train_recipe
from weightzoo.recipe import load_recipe
from weightzoo.training.engine import Schedule
from weightzoo.weighting.learned_loss import HYPERPARAMETERS, RobustLossConfig
from weightzoo.weighting.nets import CMWNet
from weightzoo.weighting.reduction import LossTerm

SHORT = ["schedule.epochs=2", "schedule.milestones=[]", "model.hidden=[32]", "schedule.warmup_epochs=1"]


def test_poly_soft_matches_its_definition_and_is_bounded() -> None:
    torch.manual_seed(0)
    logits, y = torch.randn(64, 5) * 4, torch.randint(0, 5, (64,))
    lam, d = 3.0, 2.5
    loss = per_sample_loss("poly-soft", logits, y, lam=lam, d=d)
    ce = F.cross_entropy(logits, y, reduction="none")
    cap = (d - 1) / d * lam
    expected = torch.where(ce < lam, cap * (1 - (1 - ce / lam) ** (d / (d - 1))), torch.full_like(ce, cap))
    torch.testing.assert_close(loss, expected)
    assert bool((loss <= cap + 1e-6).all()) and bool((ce >= lam).any())
    with pytest.raises(ValueError, match="d > 1"):
        per_sample_loss("poly-soft", logits, y, d=1.0)


def test_bi_tempered_reduces_to_ce_and_bounds_the_loss() -> None:
    torch.manual_seed(1)
    logits, y = torch.randn(32, 4) * 5, torch.randint(0, 4, (32,))
    torch.testing.assert_close(per_sample_loss("bi-tempered", logits, y, t1=1.0, t2=1.0),
                               F.cross_entropy(logits, y, reduction="none"))
    p = tempered_softmax(logits, 1.7)
    torch.testing.assert_close(p.sum(1), torch.ones(32))
    assert bool((p > F.softmax(logits, 1).min()).all())  # heavier tail than softmax
    bounded = per_sample_loss("bi-tempered", logits, y, t1=0.5, t2=1.5)
    assert bool((bounded <= 1 / (1 - 0.5) + 1 / (2 - 0.5) + 1e-5).all())  # log_t1 is bounded for t1 < 1
    with pytest.raises(ValueError, match="t2 >= 1"):
        per_sample_loss("bi-tempered", logits, y, t2=0.5)


@pytest.mark.parametrize("loss", list(HYPERPARAMETERS))
def test_learned_hyperparameters_stay_in_range(loss: str) -> None:
    """Any raw value, however large a step took it, maps into the valid range."""
    learned = LearnedRobustLoss(RobustLossConfig(loss=loss))
    assert learned.hyperparameters() == pytest.approx({k: v for k, (_, v) in HYPERPARAMETERS[loss].items()})
    logits, y = torch.randn(8, 3), torch.randint(0, 3, (8,))
    for raw in (-50.0, 50.0):
        with torch.no_grad():
            for p in learned.parameters():
                p.fill_(raw)
        values = learned.hyperparameters()
        assert all(math.isfinite(v) for v in values.values())
        assert torch.isfinite(learned(logits, y)).all()
        for name, value in values.items():
            kind = HYPERPARAMETERS[loss][name][0]
            low, high = {"unit": (0, 1), "positive": (0, math.inf), "above_one": (1, math.inf),
                         "one_to_four": (1, 4)}[kind]
            assert low <= value <= high, (name, value)
    with pytest.raises(ValueError, match="must be in"):
        LearnedRobustLoss(RobustLossConfig(loss="gce"), q=1.5)
    with pytest.raises(ValueError, match="no hyper-parameter"):
        LearnedRobustLoss(RobustLossConfig(loss="gce"), temperature=2.0)


@pytest.fixture(scope="module")
def arl_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("arl") / "run"
    recipe = load_recipe("digits-sym40-arl-gce", SHORT)
    train_recipe(recipe, out, device="cpu", progress=False)
    return out


def test_arl_meta_learns_the_hyperparameter_and_publishes_the_loss(arl_run: Path) -> None:
    history = json.loads((arl_run / "metrics.json").read_text())["history"]
    assert "learned_q" not in history[0] and history[-1]["meta_loss"] > 0  # epoch 1 is warm-up
    learned = load_artifact(arl_run / WEIGHTER_DIR)
    assert isinstance(learned, LearnedRobustLoss) and learned.config.loss == "gce"
    q = learned.hyperparameters()["q"]
    assert 0 < q < 1 and q != pytest.approx(0.7, abs=1e-6)  # it moved, and stayed in range
    assert abs(q - history[-1]["learned_q"]) < 0.05  # the log is the epoch's mean
    assert LearnedRobustLoss.from_pretrained(arl_run / WEIGHTER_DIR).hyperparameters() == {"q": q}
    with pytest.raises(TypeError, match="not a CMWNet"):
        CMWNet.from_pretrained(arl_run / WEIGHTER_DIR)
    card = (arl_run / WEIGHTER_DIR / "README.md").read_text()
    assert "LearnedRobustLoss.from_pretrained" in card and "robust-loss" in card


def test_a_learned_loss_applies_frozen(arl_run: Path, tmp_path: Path) -> None:
    result = apply_weighter(str(arl_run / WEIGHTER_DIR), tmp_path / "apply", dataset="digits",
                            bias="symmetric:0.4", model={"name": "mlp", "hidden": [32]}, seed=2,
                            schedule=Schedule(epochs=2, warmup_epochs=1), progress=False, weights_report=True)
    assert result["runs"]["weighter"]["test_acc"] > 0.3 and "weights" not in result


def test_robust_loss_artifacts_load_strictly(arl_run: Path, tmp_path: Path) -> None:
    import shutil

    directory = tmp_path / "loss"
    shutil.copytree(arl_run / WEIGHTER_DIR, directory)
    config = json.loads((directory / CONFIG_NAME).read_text())
    (directory / CONFIG_NAME).write_text(json.dumps({**config, "loss": "magic"}))
    with pytest.raises(WeighterFileError, match="unknown learnable loss 'magic'"):
        load_artifact(directory)
    (directory / CONFIG_NAME).write_text(json.dumps({**config, "kind": "weird"}))
    with pytest.raises(WeighterFileError, match="unknown artifact kind 'weird'"):
        load_artifact(directory)
    (directory / CONFIG_NAME).write_text(json.dumps(config))
    metadata = {"weightzoo_config": json.dumps(config, indent=2, sort_keys=True), "weightzoo_schema": "1"}
    save_file({"raw.q": torch.tensor(float("nan"))}, str(directory / WEIGHTS_NAME), metadata=metadata)
    with pytest.raises(WeighterFileError, match="raw.q holds NaN"):
        load_artifact(directory)
    save_file({"raw.lam": torch.tensor(1.0)}, str(directory / WEIGHTS_NAME), metadata=metadata)
    with pytest.raises(WeighterFileError, match="missing: raw.q"):
        load_artifact(directory)


@pytest.mark.parametrize("loss", list(HYPERPARAMETERS))
def test_both_exact_estimators_agree_on_learned_losses(loss: str) -> None:
    """The hyper-parameters sit inside powers and exponentials; the forward-mode route still
    gives the second-order route's gradient (BatchNorm in the model)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
                                torch.nn.Linear(8, 3)).double()
    learned = LearnedRobustLoss(RobustLossConfig(loss=loss)).double()
    x, y = torch.randn(10, 6, dtype=torch.float64), torch.randint(0, 3, (10,))
    problem = BilevelProblem(
        model=model, x=x, objective=lambda z: {"r": LossTerm(learned(z, y, learn=True))},
        meta_x=torch.randn(5, 6, dtype=torch.float64), meta_y=torch.randint(0, 3, (5,)),
        meta_loss_fn=F.cross_entropy, hyper_params=list(learned.parameters()), lr=0.3,
    )
    exact, jvp = build_estimator("exact")(problem), build_estimator("jvp")(problem)
    assert any(float(g.abs().max()) > 0 for g in exact.grads)
    for a, b in zip(exact.grads, jvp.grads, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-14)
