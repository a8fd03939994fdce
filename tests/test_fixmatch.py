"""Semi-supervised training: FixMatch's views, split and mask, and the weighter masks."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image, ImageOps
from torch import nn

from weightzoo import MWNet, WeightedLoss, fixmatch_unlabeled_loss
from weightzoo.artifact.format import Provenance, load_artifact
from weightzoo.cli.main import cli
from weightzoo.methods.base import Batch
from weightzoo.methods.fixmatch import (
    FixMatch,
    FixMatchConfig,
    FixMatchMetaConfig,
    labeled_split,
    threshold_mask,
)
from weightzoo.pipeline import prepare_data
from weightzoo.training.engine import Schedule, Trainer, TrainingSet
from weightzoo.training.randaugment import OPS, _apply, _equalize, strong_view
from weightzoo.weighting.reduction import total_loss

FAST = Schedule(epochs=2, batch_size=16, lr=0.03, milestones=[], warmup_epochs=1, amp=False)


def digits() -> TrainingSet:
    return prepare_data("digits", "none", seed=0).train


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))


def fit(method: FixMatch, data: TrainingSet, out: Path | None = None, epochs: int = 2,
        resume: bool = False) -> Trainer:
    trainer = Trainer(mlp(), data, replace(FAST, epochs=epochs), device="cpu", progress=False, out_dir=out)
    trainer.fit(method, resume=resume)
    return trainer


def test_strong_view_draws_operations_per_image() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 1, 8, 8).repeat(64, 1, 1, 1)
    out = strong_view(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert len({tuple(row.flatten().tolist()) for row in out}) > 32  # not one op for the batch
    image = torch.rand(len(OPS), 3, 16, 16)
    changed = _apply(image, torch.arange(len(OPS)), torch.full((len(OPS),), 0.8))
    moved = (changed - image).abs().flatten(1).amax(1)
    assert moved[OPS.index("identity")] == 0 and (moved[1:] > 0).all()  # every other op acts
    with pytest.raises(ValueError, match="image batches"):
        strong_view(torch.randn(4, 64))


def test_equalize_is_pils() -> None:
    torch.manual_seed(0)
    images = torch.round(torch.rand(4, 3, 16, 16) ** 2 * 255) / 255
    equalized = _equalize(images)
    for image, ours in zip(images, equalized, strict=True):
        pixels = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        reference = np.asarray(ImageOps.equalize(Image.fromarray(pixels)), dtype=np.float32) / 255
        assert np.array_equal(ours.permute(1, 2, 0).numpy(), reference)


def test_labeled_split_is_stratified_and_seeded() -> None:
    labels = torch.arange(5).repeat(20)
    split = labeled_split(labels, 3, 5, seed=1)
    assert torch.equal(torch.bincount(labels[split]), torch.full((5,), 3))
    assert torch.equal(split, labeled_split(labels, 3, 5, seed=1))
    assert not torch.equal(split, labeled_split(labels, 3, 5, seed=2))
    with pytest.raises(ValueError, match="more than class 4 has"):
        labeled_split(torch.cat([labels, torch.arange(4).repeat(10)]), 21, 5, seed=0)
    with pytest.raises(ValueError, match="labeled_per_class must be >= 1"):
        FixMatchConfig(labeled_per_class=0)


def test_threshold_mask_and_loss_are_fixmatchs() -> None:
    torch.manual_seed(0)
    b, u = 4, 12
    logits = torch.randn(b + 2 * u, 10) * 4
    y = torch.randint(0, 10, (b,))
    weak, strong = logits[b : b + u], logits[b + u :]
    mask = (F.softmax(weak, 1).max(1).values >= 0.95).float()
    assert 0 < mask.sum() < u  # both kinds in the batch
    assert torch.equal(threshold_mask(weak, 0.95), mask)
    expected_u = (mask * F.cross_entropy(strong, weak.argmax(1), reduction="none")).mean()
    method = FixMatch(FixMatchConfig(lambda_u=0.5))
    batch = Batch(x=torch.zeros(b, 1), y=y, index=torch.arange(b), epoch=0, iteration=0, lr=0.1,
                  warmup=False, u_index=torch.arange(u))
    terms = method.objective(batch, grad=False)(logits)
    assert torch.allclose(total_loss(terms), F.cross_entropy(logits[:b], y) + 0.5 * expected_u)
    assert torch.allclose(fixmatch_unlabeled_loss(weak, strong, 0.95), expected_u)
    weighting = WeightedLoss.for_data(MWNet(), num_classes=10)
    pseudo = weak.argmax(1)
    v = weighting.weights(F.cross_entropy(strong, pseudo, reduction="none"), pseudo)
    assert torch.allclose(fixmatch_unlabeled_loss(weak, strong, weighting),
                          (v * F.cross_entropy(strong, pseudo, reduction="none")).mean())


@pytest.mark.slow
def test_fixmatch_trains_and_reports_pseudo_labels() -> None:
    trainer = fit(FixMatch(FixMatchConfig(labeled_per_class=4)), digits(), epochs=4)
    last = trainer.history[-1]
    assert last["test_acc"] > 0.5  # 40 labels; chance is 0.1
    assert 0 < last["pseudo_acc"] <= 1 and 0 <= last["used_fraction"] <= 1
    assert len(trainer.history) == 4


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["threshold", "meta"])
def test_unlabelled_labels_never_reach_the_loss(variant: str) -> None:
    """Training is bit-identical when every unlabelled label is replaced: it would differ if a
    label of the unlabelled part entered a loss, a family or a meta step."""
    data = digits()
    labeled = labeled_split(data.y, 4, 10, seed=0)
    scrambled_y = torch.randint(0, 10, data.y.shape, generator=torch.Generator().manual_seed(5))
    scrambled_y[labeled] = data.y[labeled]
    scrambled = replace(data, y=scrambled_y, clean_y=data.y)  # reports keep the truth
    states = []
    for d in (data, scrambled):
        config = FixMatchMetaConfig(labeled_per_class=4, hidden=8) if variant == "meta" else FixMatchConfig()
        method = FixMatch(config, labeled=labeled)
        states.append((fit(method, d).module.state_dict(), method))
    for key, value in states[0][0].items():
        assert torch.equal(value, states[1][0][key]), key
    if variant == "meta":
        for a, b in zip(states[0][1].weighter.parameters(), states[1][1].weighter.parameters(), strict=True):
            assert torch.equal(a, b)


@pytest.mark.slow
def test_meta_mask_resumes_bit_identically(tmp_path: Path) -> None:
    data = digits()
    config = FixMatchMetaConfig(labeled_per_class=4, hidden=8)
    straight = fit(FixMatch(config), data, tmp_path / "a", epochs=3)
    fit(FixMatch(config), data, tmp_path / "b", epochs=2)
    method = FixMatch(config)
    resumed = fit(method, data, tmp_path / "b", epochs=3, resume=True)
    for pa, pb in zip(straight.module.parameters(), resumed.module.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert straight.history[-1] == resumed.history[-1] | {"seconds": straight.history[-1]["seconds"]}


def test_fixmatch_needs_images_and_unlabelled_samples() -> None:
    data = digits()
    flat = replace(data, x=data.x.flatten(1), test_x=data.test_x.flatten(1))
    with pytest.raises(ValueError, match="need images"):
        Trainer(nn.Linear(64, 10), flat, FAST, device="cpu", progress=False).fit(FixMatch())
    with pytest.raises(ValueError, match="every training sample is labelled"):
        fit(FixMatch(labeled=torch.arange(len(data.y))), data)


@pytest.mark.slow
def test_fixmatch_recipe_meta_trains_a_weighter_beside_the_threshold_baseline(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, [
        "train", "mnist5k-fixmatch4-cmwnet", "--out", str(tmp_path / "run"), "--epochs", "2",
        "--set", "data.dataset=digits", "--set", "schedule.milestones=[]", "--baseline", "fixmatch",
        "--no-progress", "--threads", "1",
    ])
    assert result.exit_code == 0, result.output
    assert "fixmatch-meta" in result.output and "fixmatch " in result.output
    baseline = json.loads((tmp_path / "run" / "baselines" / "fixmatch" / "run.json").read_text())
    assert baseline["recipe"]["method"]["labeled_per_class"] == 4  # the recipe's settings carried over
    weighter = load_artifact(tmp_path / "run" / "weighter")
    method = Provenance.from_metadata(weighter.config.metadata).method
    assert method["regime"] == "fixmatch" and method["mask"] == "meta" and method["labeled_per_class"] == 4
    assert weighter.config.normalization == "mean"
    assert "fixmatch_baseline" in (tmp_path / "run" / "weighter" / "README.md").read_text()


@pytest.mark.slow
def test_apply_fixmatch_regime_compares_with_the_threshold_mask(tmp_path: Path) -> None:
    args = ["apply", "mwnet-fmnist-sym40", "--data", "digits", "--regime", "fixmatch",
            "--labeled-per-class", "4", "--baseline", "fixmatch", "--epochs", "2", "--batch-size", "16",
            "--out", str(tmp_path / "cmp"), "--no-progress", "--threads", "1", "--json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    comparison = json.loads(result.output)
    assert set(comparison["runs"]) == {"weighter", "fixmatch"} and comparison["labeled_per_class"] == 4
    assert comparison["gain_over_fixmatch"] == pytest.approx(
        comparison["runs"]["weighter"]["test_acc"] - comparison["runs"]["fixmatch"]["test_acc"])
    for bad, message in ((["--baseline", "ce"], "baseline 'fixmatch'"),
                         (["--labeled-per-class", "1000"], "more than class")):
        refused = CliRunner().invoke(cli, [*args[:-4], *bad, "--out", str(tmp_path / "x"), "--no-progress"])
        assert refused.exit_code != 0 and message in refused.output, refused.output
        assert not (tmp_path / "x").exists()
