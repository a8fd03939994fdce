"""Deferred re-balancing (``Schedule.rebalance = "deferred"``, DRW): the plain losses and the
frozen artifacts weight their losses by class from the first milestone on; everything else
refuses it before training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from weightzoo.artifact import hub
from weightzoo.cli.main import cli
from weightzoo.data.sources import load_dataset
from weightzoo.losses import class_balanced_weights
from weightzoo.methods.base import Batch
from weightzoo.methods.frozen import FrozenLoss, FrozenWeighting
from weightzoo.methods.meta_weighting import MetaWeighting, MetaWeightingConfig
from weightzoo.methods.plain import PlainLoss
from weightzoo.pipeline import apply_weighter
from weightzoo.recipe import load_recipe
from weightzoo.training.engine import Schedule, Trainer, TrainingSet
from weightzoo.weighting.learned_loss import LearnedRobustLoss
from weightzoo.weighting.nets import MWNet


@pytest.fixture(scope="module")
def longtail() -> TrainingSet:
    """300 digits with a long tail: class c keeps its first 30 / (c + 1) samples."""
    splits = load_dataset("digits", seed=0)
    keep = torch.cat([torch.nonzero(splits.train_y == c).flatten()[: max(1, 30 // (c + 1))]
                      for c in range(10)])
    return TrainingSet(x=splits.train_x[keep], y=splits.train_y[keep], test_x=splits.test_x[:100],
                       test_y=splits.test_y[:100], num_classes=10)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))


def deferred(epochs: int = 3, milestones: tuple[int, ...] = (2,), **kwargs) -> Schedule:
    return Schedule(epochs=epochs, batch_size=20, milestones=list(milestones), rebalance="deferred", **kwargs)


def batch_of(data: TrainingSet, epoch: int, warmup: bool = False) -> Batch:
    index = torch.arange(16)
    return Batch(x=data.x[index], y=data.y[index], index=index, epoch=epoch, iteration=0, lr=0.1,
                 warmup=warmup)


def test_the_schedule_rebalances_from_its_first_milestone() -> None:
    schedule = deferred(6, (4, 2))
    assert [schedule.rebalancing(e) for e in range(6)] == [False, False, True, True, True, True]
    assert not Schedule(epochs=6, milestones=[2]).rebalancing(5)  # "none", the default
    for bad in (dict(epochs=3), dict(epochs=3, milestones=[3]),
                dict(epochs=4, milestones=[1], warmup_epochs=2)):
        with pytest.raises(ValueError, match="a milestone after the warm-up and before the last epoch"):
            Schedule(rebalance="deferred", **bad)
    with pytest.raises(ValueError, match="schedule.rebalance must be one of"):
        Schedule(epochs=3, milestones=[1], rebalance="always")


def test_plain_ce_becomes_class_balanced_ce_at_the_milestone(longtail: TrainingSet) -> None:
    trainer = Trainer(mlp(), longtail, deferred(), device="cpu", progress=False)
    method = PlainLoss("ce")
    trainer.fit(method)  # sets the class weights up
    weights = class_balanced_weights(torch.bincount(longtail.y, minlength=10)).float()
    assert torch.allclose(trainer.class_weights, weights)
    for epoch, expected in ((1, None), (2, weights)):
        batch = batch_of(longtail, epoch)
        (term,) = method.step(trainer, batch).terms.values()
        ce = F.cross_entropy(trainer.model(batch.x), batch.y, reduction="none")
        target = ce if expected is None else ce * expected[batch.y]
        assert torch.allclose(term.losses, target, atol=1e-6)


def test_deferred_training_matches_plain_training_until_the_milestone(longtail: TrainingSet) -> None:
    plain = Trainer(mlp(), longtail, Schedule(epochs=3, batch_size=20, milestones=[2]), device="cpu",
                    progress=False)
    drw = Trainer(mlp(), longtail, deferred(), device="cpu", progress=False)
    plain_history, drw_history = plain.fit(PlainLoss("ce")), drw.fit(PlainLoss("ce"))
    assert [r["train_loss"] for r in drw_history[:2]] == [r["train_loss"] for r in plain_history[:2]]
    assert drw_history[2]["train_loss"] != plain_history[2]["train_loss"]


def test_a_frozen_weighter_is_rebalanced_after_its_weights(longtail: TrainingSet) -> None:
    """The weights still come from the unbalanced CE; the weighted losses are re-balanced."""
    weighter = MWNet(hidden=8).requires_grad_(False)
    trainer = Trainer(mlp(), longtail, deferred(), device="cpu", progress=False)
    method = FrozenWeighting(weighter=weighter)
    trainer.fit(method)
    batch = batch_of(longtail, 2)
    output = method.step(trainer, batch)
    ce = F.cross_entropy(trainer.model(batch.x), batch.y, reduction="none")
    assert torch.allclose(output.weights, method.weighting.weights(ce, batch.y, checked=True), atol=1e-6)
    assert torch.allclose(output.terms["ce"].losses, ce * trainer.class_weights[batch.y], atol=1e-6)


def test_a_learned_loss_warms_up_with_ce_only_when_asked_and_is_rebalanced(
    longtail: TrainingSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    loss = LearnedRobustLoss(q=0.6)
    trainer = Trainer(mlp(), longtail, deferred(warmup_epochs=1), device="cpu", progress=False)
    method = FrozenLoss(loss=loss)
    trainer.fit(method)
    for epoch, warmup in ((0, True), (1, False), (2, False)):
        batch = batch_of(longtail, epoch, warmup=warmup)
        (term,) = method.step(trainer, batch).terms.values()
        logits = trainer.model(batch.x)
        plain = F.cross_entropy(logits, batch.y, reduction="none") if warmup else loss(logits, batch.y)
        balance = trainer.class_weights[batch.y] if epoch >= 2 else torch.ones(16)
        assert torch.allclose(term.losses, plain * balance, atol=1e-6)
    # `weightzoo apply` gives a learned loss no warm-up unless asked (a weighter gets 2 epochs),
    # reading the artifact once to decide (one revision of an unpinned Hub name)
    loads, load = [], hub.load_pretrained

    def counted(name, **kwargs):
        loads.append(name)
        return load(name, **kwargs)

    monkeypatch.setattr("weightzoo.artifact.hub.load_pretrained", counted)
    monkeypatch.setattr("weightzoo.pipeline.load_pretrained", counted)
    for entry, expected in (("arl-gce-fmnist-sym40", 0), ("mwnet-fmnist-sym40", 2)):
        out = tmp_path / entry
        result = CliRunner().invoke(cli, ["apply", entry, "--data", "digits", "--epochs", "3",
                                          "--out", str(out), "--no-progress", "--threads", "1"])
        assert result.exit_code == 0, result.output
        assert json.loads((out / "comparison.json").read_text())["schedule"]["warmup_epochs"] == expected
    assert loads == ["arl-gce-fmnist-sym40", "mwnet-fmnist-sym40"]


def test_methods_that_cannot_rebalance_refuse_it_before_training(longtail: TrainingSet) -> None:
    from weightzoo.training.joint import fit_jointly

    schedule = deferred()

    def meta() -> MetaWeighting:
        return MetaWeighting(MetaWeightingConfig(), weighter=MWNet(hidden=8),
                             meta_x=longtail.x[:20], meta_y=longtail.y[:20])

    with pytest.raises(ValueError, match="does not support schedule.rebalance"):
        Trainer(mlp(), longtail, schedule, device="cpu", progress=False).fit(meta())
    with pytest.raises(ValueError, match="does not support schedule.rebalance"):  # multi-source too
        fit_jointly([Trainer(mlp(), longtail, schedule, device="cpu", progress=False) for _ in range(2)],
                    [meta(), meta()])
    unprepared = Trainer(mlp(), longtail, schedule, device="cpu", progress=False)
    with pytest.raises(RuntimeError, match="was not prepared"):
        unprepared.rebalanced(torch.ones(16), batch_of(longtail, 2))
    with pytest.raises(ValueError, match="balances the classes already"):
        Trainer(mlp(), longtail, schedule, device="cpu", progress=False).fit(PlainLoss("class-balanced"))


def test_apply_refuses_rebalancing_it_cannot_do_before_writing(tmp_path: Path) -> None:
    out = tmp_path / "apply"
    with pytest.raises(ValueError, match="balances the classes already"):
        apply_weighter("cmwnet-cb-fmnist-longtail", out, dataset="digits", bias="longtail:10",
                       schedule=deferred(2, (1,)), progress=False)
    with pytest.raises(ValueError, match="no one class to weight by"):
        apply_weighter("cmwnet-sl-fmnist-multi", out, dataset="digits", bias="longtail:10",
                       schedule=deferred(2, (1,)), progress=False)
    with pytest.raises(ValueError, match="for supervised training, not the fixmatch regime"):
        apply_weighter("cmwnet-fixmatch4-fmnist", out, dataset="digits", regime="fixmatch",
                       schedule=deferred(2, (1,)), progress=False)
    with pytest.raises(ValueError, match="the baseline.s. proden do not support it"):
        apply_weighter("arl-gce-fmnist-sym40", out, dataset="digits", bias="longtail:10",
                       baselines=("proden",), schedule=deferred(2, (1,)), progress=False)
    assert not out.exists()
    result = CliRunner().invoke(cli, ["apply", "arl-gce-fmnist-sym40", "--data", "digits", "--epochs", "2",
                                      "--rebalance", "deferred", "--baseline", "class-balanced",
                                      "--out", str(out), "--no-progress"])
    assert result.exit_code != 0 and "balances the classes already" in result.output
    assert not out.exists()


def test_apply_rebalances_the_learned_loss_and_the_baselines(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, [
        "apply", "arl-gce-fmnist-sym40", "--data", "digits", "--bias", "longtail:20", "--epochs", "3",
        "--rebalance", "deferred", "--baseline", "ce", "--out", str(tmp_path / "apply"), "--no-progress",
        "--threads", "1", "--json"])
    assert result.exit_code == 0, result.output
    comparison = json.loads((tmp_path / "apply" / "comparison.json").read_text())
    assert comparison["schedule"]["rebalance"] == "deferred" and comparison["schedule"]["milestones"] == [2]
    assert set(comparison["runs"]) == {"weighter", "ce"}


def test_a_recipe_takes_the_rebalance_key() -> None:
    recipe = load_recipe("digits-sym40-mwnet", ['schedule.rebalance="deferred"', "schedule.milestones=[2]"])
    assert recipe.schedule.rebalance == "deferred"
    with pytest.raises(ValueError, match="schedule.rebalance must be one of"):
        load_recipe("digits-sym40-mwnet", ['schedule.rebalance="sometimes"'])


def test_weighted_loss_rebalances_on_request_and_resumes_it() -> None:
    """The user-loop form: ``crit.rebalance()`` at the lr drop multiplies each sample's loss by
    its class's class-balanced weight (of the counts the families were fitted on); the
    weights stay the weighter's at each sample's CE; the switch is in ``state_dict``."""
    from weightzoo import WeightedLoss

    counts = [200, 120, 80, 40, 20, 10, 6, 4, 2, 1]
    crit = WeightedLoss.from_pretrained("cmwnet-fmnist-longtail", class_counts=counts, warmup_epochs=0)
    torch.manual_seed(0)
    logits, y = torch.randn(32, 10), torch.randint(0, 10, (32,))
    plain = crit(logits, y)
    weights = crit.last_weights
    crit.rebalance()
    balance = class_balanced_weights(counts).float()
    ce = F.cross_entropy(logits, y, reduction="none")
    torch.testing.assert_close(crit(logits, y), crit.weighting.reduce(ce * balance[y], weights))
    torch.testing.assert_close(crit.last_weights, weights)
    restored = WeightedLoss.from_pretrained("cmwnet-fmnist-longtail", class_counts=counts, warmup_epochs=0)
    restored.load_state_dict(crit.state_dict())
    assert restored.rebalancing
    restored.rebalance(False)
    torch.testing.assert_close(restored(logits, y), plain)
    # reduce_losses re-balances any per-sample loss the same way
    torch.testing.assert_close(crit.reduce_losses(ce, y), crit.weighting.reduce(ce * balance[y], weights))
    unfitted = WeightedLoss.from_pretrained("mwnet-fmnist-sym40", warmup_epochs=0)
    with pytest.raises(ValueError, match="build the criterion with class_counts= or labels="):
        unfitted.load_state_dict(crit.state_dict())
    with pytest.raises(ValueError, match="balances the classes already"):
        WeightedLoss.from_pretrained("cmwnet-cb-fmnist-longtail", class_counts=counts).rebalance()
    with pytest.raises(ValueError, match="build the criterion with class_counts= or labels="):
        WeightedLoss.from_pretrained("mwnet-fmnist-sym40", warmup_epochs=0).rebalance()


def test_a_run_resumes_only_with_the_same_rebalancing(longtail: TrainingSet, tmp_path: Path) -> None:
    """``rebalance`` is part of the run a checkpoint belongs to; a checkpoint written before the
    key existed (no ``rebalance`` in its schedule) resumes as "none"."""
    from weightzoo.training.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint

    plain = Schedule(epochs=2, batch_size=20, milestones=[1])
    Trainer(mlp(), longtail, plain, device="cpu", progress=False, out_dir=tmp_path).fit(PlainLoss("ce"))
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert "rebalance" not in state["run"]["schedule"]
    drw = Schedule(epochs=3, batch_size=20, milestones=[1], rebalance="deferred")
    with pytest.raises(ValueError, match="schedule differ"):
        Trainer(mlp(), longtail, drw, device="cpu", progress=False,
                out_dir=tmp_path).fit(PlainLoss("ce"), resume=True)
    save_checkpoint(tmp_path / CHECKPOINT_NAME, state)
    longer = Schedule(epochs=3, batch_size=20, milestones=[1])
    history = Trainer(mlp(), longtail, longer, device="cpu", progress=False,
                      out_dir=tmp_path).fit(PlainLoss("ce"), resume=True)
    assert len(history) == 3
