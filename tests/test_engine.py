"""The training engine: bit-identical resume, checkpoints, schedule, reports, strategies."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from weightzoo.bilevel.estimators import BilevelProblem
from weightzoo.bilevel.famus import Famus, FamusConfig
from weightzoo.bilevel.metaset import VirtualStepConfig
from weightzoo.data.sources import load_dataset
from weightzoo.methods.base import Batch, Method, RunContext, StepOutput
from weightzoo.methods.frozen import FrozenWeighting
from weightzoo.methods.l2rw import L2RW, L2RWConfig
from weightzoo.methods.meta_weighting import MetaConfig, MetaWeighting, MetaWeightingConfig
from weightzoo.methods.plain import PlainLoss
from weightzoo.methods.robust_loss import AdaptiveRobustLoss, ARLConfig
from weightzoo.methods.soft_labels import SoftLabelConfig, SoftLabelMetaWeighting
from weightzoo.training.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from weightzoo.training.engine import Schedule, Trainer, TrainingSet, accuracy_report
from weightzoo.training.views import crop_flip
from weightzoo.weighting.nets import CMWNet, MWNet
from weightzoo.weighting.reduction import LossTerm

# ----------------------------------------------------------------------------------------
# helpers


@pytest.fixture(scope="module")
def digits() -> TrainingSet:
    """A small slice of scikit-learn digits (300 train / 120 test, 8x8 images), with 30%
    of the training labels flipped so that weighting has something to do."""
    splits = load_dataset("digits", seed=0)
    x, y = splits.train_x[:300], splits.train_y[:300].clone()
    clean = y.clone()
    gen = torch.Generator().manual_seed(0)
    flip = torch.rand(len(y), generator=gen) < 0.3
    y[flip] = torch.randint(0, 10, (int(flip.sum()),), generator=gen)
    return TrainingSet(x=x, y=y, test_x=splits.test_x[:120], test_y=splits.test_y[:120],
                       num_classes=10, clean_y=clean)


@pytest.fixture(scope="module")
def meta_set() -> tuple[torch.Tensor, torch.Tensor]:
    """A clean meta set of 50 digits (disjoint from the training slice)."""
    splits = load_dataset("digits", seed=0)
    return splits.train_x[400:450], splits.train_y[400:450]


def mlp(seed: int = 0, bn: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten(), nn.Linear(64, 32)]
    if bn:
        layers.append(nn.BatchNorm1d(32))
    layers += [nn.ReLU(), nn.Linear(32, 10)]
    return nn.Sequential(*layers)


def schedule(epochs: int = 3, **kwargs) -> Schedule:
    options = dict(epochs=epochs, batch_size=50, lr=0.1, milestones=[2], warmup_epochs=0)
    options.update(kwargs)
    return Schedule(**options)


def meta_strategy(source: str, meta: tuple[torch.Tensor, torch.Tensor] | None,
                  kind: str = "mwnet", estimator: str = "auto", real_step: str = "updated",
                  meta_lr: float = 1e-2) -> MetaWeighting:
    torch.manual_seed(1)
    weighter = MWNet(hidden=16) if kind == "mwnet" else CMWNet(hidden=16, num_families=3)
    if source == "train":
        config = MetaConfig(meta_lr=1e-2, meta_batch_size=40, source="train", per_class=4,
                            mixup_alpha=1.0, ema_decay=0.9)
        return MetaWeighting(MetaWeightingConfig(meta=config), weighter=weighter)
    config = MetaConfig(meta_lr=meta_lr, meta_batch_size=40, famus=FamusConfig(expected_layers=1))
    return MetaWeighting(MetaWeightingConfig(meta=config, estimator=estimator, real_step=real_step),
                         weighter=weighter, meta_x=meta[0], meta_y=meta[1])


def l2rw_strategy(meta: tuple[torch.Tensor, torch.Tensor], estimator: str = "auto") -> L2RW:
    strategy = L2RW(L2RWConfig(meta=VirtualStepConfig(meta_batch_size=40), estimator=estimator))
    strategy.bind(RunContext(10, meta[0], meta[1]))
    return strategy


def sl_strategy(meta: tuple[torch.Tensor, torch.Tensor], estimator: str = "auto",
                real_step: str = "updated", meta_lr: float = 1e-2,
                meta_interval: int = 1) -> SoftLabelMetaWeighting:
    torch.manual_seed(1)
    config = SoftLabelConfig(hidden=16, teacher_decay=0.9, estimator=estimator, real_step=real_step,
                             meta=MetaConfig(meta_lr=meta_lr, meta_batch_size=40, mixup_alpha=1.0,
                                             meta_interval=meta_interval))
    strategy = SoftLabelMetaWeighting(config, meta_x=meta[0], meta_y=meta[1])
    strategy.bind(RunContext(10, meta[0], meta[1]))
    return strategy


def arl_strategy(meta: tuple[torch.Tensor, torch.Tensor]) -> AdaptiveRobustLoss:
    strategy = AdaptiveRobustLoss(ARLConfig(loss="bi-tempered", meta=MetaConfig(meta_lr=5e-2,
                                                                                meta_batch_size=40)))
    strategy.bind(RunContext(10, meta[0], meta[1]))
    return strategy


STRATEGIES = {
    "plain": lambda meta: PlainLoss("ce"),
    "arl-bi-tempered": arl_strategy,
    "l2rw": l2rw_strategy,
    "cmwnet-sl": sl_strategy,
    "meta-clean": lambda meta: meta_strategy("clean", meta),
    "meta-clean-cmwnet": lambda meta: meta_strategy("clean", meta, kind="cmwnet"),
    "meta-train-ema-mixup": lambda meta: meta_strategy("train", None),
    "meta-famus": lambda meta: meta_strategy("clean", meta, estimator="famus"),
    "cmwnet-sl-famus": lambda meta: sl_strategy(meta, estimator="famus"),
    "l2rw-famus": lambda meta: l2rw_strategy(meta, estimator="famus"),
    "meta-lagged": lambda meta: meta_strategy("clean", meta, kind="cmwnet", real_step="lagged"),
    "cmwnet-sl-lagged": lambda meta: sl_strategy(meta, real_step="lagged"),
}


def run(data: TrainingSet, strategy: Method, sched: Schedule, out: Path | None,
        resume: bool = False, record: bool = False, bn: bool = False) -> Trainer:
    torch.manual_seed(123)  # the global RNG (meta batches, mixup) starts equal in every run
    trainer = Trainer(mlp(bn=bn), data, sched, device="cpu", seed=7, out_dir=out,
                      progress=False, record_weights=record)
    trainer.fit(strategy, resume=resume)
    return trainer


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ----------------------------------------------------------------------------------------
# resume


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_resume_is_bit_identical(name: str, digits: TrainingSet, meta_set, tmp_path: Path) -> None:
    straight_strategy = STRATEGIES[name](meta_set)
    straight = run(digits, straight_strategy, schedule(3), tmp_path / "straight", record=True)

    out = tmp_path / "resumed"
    first = run(digits, STRATEGIES[name](meta_set), schedule(2), out, record=True)
    assert len(first.history) == 2
    resumed_strategy = STRATEGIES[name](meta_set)
    second = run(digits, resumed_strategy, schedule(3), out, resume=True, record=True)

    assert second.start_epoch == 2
    assert [r["epoch"] for r in second.history] == [1, 2, 3]
    assert_same_tensors(straight.module.state_dict(), second.module.state_dict())
    assert [r["test_acc"] for r in straight.history] == [r["test_acc"] for r in second.history]
    assert [r["train_loss"] for r in straight.history] == [r["train_loss"] for r in second.history]
    assert_same_tensors(straight.optimizer.state_dict()["state"][0],
                        second.optimizer.state_dict()["state"][0])
    assert second.iteration == straight.iteration == 3 * 6
    if isinstance(straight_strategy, SoftLabelMetaWeighting):
        assert_same_tensors(straight_strategy.teacher.module.state_dict(),
                            resumed_strategy.teacher.module.state_dict())
    if isinstance(straight_strategy, AdaptiveRobustLoss):
        assert straight_strategy.loss.hyperparameters() == resumed_strategy.loss.hyperparameters()
        assert straight_strategy.loss.hyperparameters() != {"t1": 0.8, "t2": 1.2}
    if isinstance(straight_strategy, L2RW):
        assert torch.equal(straight.sample_weights, second.sample_weights)
    if isinstance(getattr(straight_strategy, "estimator", None), Famus):
        assert_same_tensors(straight_strategy.estimator.samplers.state_dict(),
                            resumed_strategy.estimator.samplers.state_dict())
        assert "famus_layers" in second.history[-1]
    if isinstance(straight_strategy, MetaWeighting):
        assert_same_tensors(straight_strategy.weighter.state_dict(),
                            resumed_strategy.weighter.state_dict())
        assert [r["meta_loss"] for r in straight.history] == [r["meta_loss"] for r in second.history]
        assert torch.equal(straight.sample_weights, second.sample_weights)
        assert torch.isfinite(second.sample_weights).all()
        if straight_strategy.meta_set.ema is not None:
            assert_same_tensors(straight_strategy.meta_set.ema.module.state_dict(),
                                resumed_strategy.meta_set.ema.module.state_dict())
            assert torch.equal(straight_strategy.meta_set.y, resumed_strategy.meta_set.y)
            assert torch.equal(straight_strategy.meta_set.x, resumed_strategy.meta_set.x)
            assert len(resumed_strategy.meta_set.y) == 4 * 10


def test_resume_of_a_finished_run_only_reloads(digits: TrainingSet, tmp_path: Path) -> None:
    done = run(digits, PlainLoss(), schedule(2), tmp_path)
    again = run(digits, PlainLoss(), schedule(2), tmp_path, resume=True)
    assert again.iteration == done.iteration
    assert [r["test_acc"] for r in again.history] == [r["test_acc"] for r in done.history]
    assert_same_tensors(done.module.state_dict(), again.module.state_dict())


def test_resume_without_checkpoint_starts_fresh(digits: TrainingSet, tmp_path: Path) -> None:
    fresh = run(digits, PlainLoss(), schedule(2), tmp_path / "a", resume=True)
    plain = run(digits, PlainLoss(), schedule(2), tmp_path / "b")
    assert [r["epoch"] for r in fresh.history] == [1, 2]
    assert_same_tensors(fresh.module.state_dict(), plain.module.state_dict())
    assert (tmp_path / "a" / CHECKPOINT_NAME).is_file()


def test_resume_refuses_a_checkpoint_of_another_run(digits: TrainingSet, tmp_path: Path) -> None:
    run(digits, PlainLoss(), schedule(1), tmp_path)
    relabelled = copy.copy(digits)
    relabelled.y = digits.y.roll(1)
    cases = [
        (relabelled, PlainLoss(), schedule(2), "labels"),
        (digits, PlainLoss(), schedule(2, lr=0.05), "schedule"),
        (digits, PlainLoss("gce"), schedule(2), "method"),
    ]
    for data, strategy, sched, differs in cases:
        with pytest.raises(ValueError, match=f"different run \\({differs} differ") as info:
            run(data, strategy, sched, tmp_path, resume=True)
        assert str(tmp_path / CHECKPOINT_NAME) in str(info.value)
    other_seed = Trainer(mlp(), digits, schedule(2), device="cpu", seed=8, out_dir=tmp_path,
                         progress=False)
    with pytest.raises(ValueError, match="seed differ"):
        other_seed.fit(PlainLoss(), resume=True)
    # more epochs is a legitimate resume
    assert len(run(digits, PlainLoss(), schedule(2), tmp_path, resume=True).history) == 2


def test_resume_needs_an_output_directory(digits: TrainingSet) -> None:
    trainer = Trainer(mlp(), digits, schedule(1), device="cpu", progress=False)
    with pytest.raises(ValueError, match="output directory"):
        trainer.fit(PlainLoss(), resume=True)


def test_corrupt_checkpoint_names_the_file(digits: TrainingSet, tmp_path: Path) -> None:
    path = tmp_path / CHECKPOINT_NAME
    path.write_bytes(b"not a checkpoint at all")
    trainer = Trainer(mlp(), digits, schedule(1), device="cpu", out_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="checkpoint") as info:
        trainer.fit(PlainLoss(), resume=True)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


# ----------------------------------------------------------------------------------------
# checkpoints


def test_checkpoint_is_written_atomically(digits: TrainingSet, tmp_path: Path) -> None:
    run(digits, PlainLoss(), schedule(2), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_NAME]
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert state["epoch"] == 1 and len(state["history"]) == 2


def test_failed_checkpoint_write_keeps_the_old_one(tmp_path: Path) -> None:
    path = tmp_path / CHECKPOINT_NAME
    save_checkpoint(path, {"epoch": 0, "w": torch.ones(3)})
    with pytest.raises(Exception):  # noqa: B017 - whatever pickling raises
        save_checkpoint(path, {"epoch": 1, "bad": lambda: None})
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_NAME]
    assert load_checkpoint(path)["epoch"] == 0


# ----------------------------------------------------------------------------------------
# non-finite losses


class NaNLoss(Method):
    name = "nan"

    def step(self, trainer: Trainer, batch: Batch) -> StepOutput:
        logits = trainer.model(batch.x)
        return StepOutput({"nan": LossTerm(logits.sum(1) * float("nan"))})


def test_nan_loss_raises_floating_point_error(digits: TrainingSet) -> None:
    trainer = Trainer(mlp(), digits, schedule(1), device="cpu", progress=False)
    before = copy.deepcopy(trainer.module.state_dict())
    with pytest.raises(FloatingPointError) as info:
        trainer.fit(NaNLoss())
    message = str(info.value)
    assert "\n" not in message
    assert "epoch 1" in message and "iteration 0" in message
    assert_same_tensors(before, trainer.module.state_dict())  # no step was taken


# ----------------------------------------------------------------------------------------
# schedule and warm-up


def test_lr_at_milestones() -> None:
    sched = Schedule(lr=0.1, milestones=[2, 4], gamma=0.1)
    lrs = [sched.lr_at(e) for e in range(6)]
    assert lrs == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    assert Schedule(lr=0.5).lr_at(100) == 0.5
    assert Schedule(lr=1.0, milestones=[1], gamma=0.5).lr_at(1) == 0.5


def test_trainer_follows_the_lr_schedule(digits: TrainingSet) -> None:
    sched = schedule(3, lr=0.05, milestones=[1, 2], gamma=0.5)
    trainer = run(digits, PlainLoss(), sched, None)
    assert [r["lr"] for r in trainer.history] == pytest.approx([0.05, 0.025, 0.0125])
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.0125)


def test_warmup_batches_get_no_weights(digits: TrainingSet, meta_set) -> None:
    x, y = digits.x[:8], digits.y[:8]
    trainer = Trainer(mlp(), digits, schedule(1, warmup_epochs=1), device="cpu", progress=False)
    meta = meta_strategy("clean", meta_set)
    frozen = FrozenWeighting(weighter=MWNet(hidden=8).requires_grad_(False))
    for strategy in (meta, frozen):
        strategy.setup(trainer)
        for warmup in (True, False):
            batch = Batch(x=x, y=y, index=torch.arange(8), epoch=0, iteration=0, lr=0.1,
                          warmup=warmup)
            output = strategy.step(trainer, batch)
            (term,) = output.terms.values()
            assert term.losses.shape == (8,)
            if warmup:
                assert output.weights is None and term.weights is None
            else:
                assert output.weights is not None and output.weights.shape == (8,)
                assert term.weights is output.weights


def test_warmup_epochs_train_with_the_plain_mean(digits: TrainingSet, meta_set) -> None:
    strategy = meta_strategy("clean", meta_set)
    w_before = copy.deepcopy(strategy.weighter.state_dict())
    trainer = run(digits, strategy, schedule(1, warmup_epochs=1), None, record=True)
    assert torch.isnan(trainer.sample_weights).all()  # no weights were ever computed
    assert "meta_loss" not in trainer.history[0]  # and no meta step taken
    assert_same_tensors(w_before, strategy.weighter.state_dict())
    # a warm-up epoch of MetaWeighting is exactly a plain CE epoch
    plain = run(digits, PlainLoss(), schedule(1, warmup_epochs=1), None)
    assert_same_tensors(plain.module.state_dict(), trainer.module.state_dict())


# ----------------------------------------------------------------------------------------
# reports


def test_accuracy_report_by_class_and_thirds() -> None:
    # train counts: head = classes {0, 2}, medium = {4, 5}, tail = {1, 3}
    counts = np.array([50, 10, 40, 5, 30, 20])
    target = torch.tensor([0, 0, 1, 1, 2, 2, 2, 2, 3, 4, 5, 5])
    pred = torch.tensor([0, 1, 1, 0, 2, 2, 2, 0, 3, 0, 5, 5])
    report = accuracy_report(pred, target, counts)
    assert report["test_acc"] == pytest.approx(8 / 12)
    assert report["per_class_acc"] == pytest.approx([0.5, 0.5, 0.75, 1.0, 0.0, 1.0])
    assert report["head_acc"] == pytest.approx((0.5 + 0.75) / 2)
    assert report["medium_acc"] == pytest.approx((0.0 + 1.0) / 2)
    assert report["tail_acc"] == pytest.approx((0.5 + 1.0) / 2)


def test_accuracy_report_edge_cases() -> None:
    # a class absent from the test split: NaN per class, left out of its third's mean
    report = accuracy_report(torch.tensor([0, 1, 1, 3, 4]), torch.tensor([0, 1, 2, 3, 4]),
                             np.array([9, 8, 7, 6, 2, 1]))
    assert math.isnan(report["per_class_acc"][5])
    assert report["head_acc"] == pytest.approx(1.0)  # classes 0, 1
    assert report["medium_acc"] == pytest.approx(0.5)  # classes 2 (wrong), 3 (right)
    assert report["tail_acc"] == pytest.approx(1.0)  # class 4 only: class 5 has no test data
    only_missing = accuracy_report(torch.tensor([0]), torch.tensor([0]), np.array([5, 4, 3]))
    assert math.isnan(only_missing["tail_acc"]) and math.isnan(only_missing["medium_acc"])
    # fewer than three classes: every class is head, medium and tail are empty
    two = accuracy_report(torch.tensor([0, 0]), torch.tensor([0, 1]), np.array([5, 5]))
    assert two["head_acc"] == pytest.approx(0.5)
    assert math.isnan(two["medium_acc"]) and math.isnan(two["tail_acc"])
    empty = accuracy_report(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                            np.array([1, 1, 1]))
    assert math.isnan(empty["test_acc"])


def test_evaluate_matches_predictions(digits: TrainingSet) -> None:
    trainer = run(digits, PlainLoss(), schedule(1), None)
    pred = trainer.predict(digits.test_x, batch_size=7)
    assert pred.shape == digits.test_y.shape
    expected = float((pred == digits.test_y).float().mean())
    assert trainer.history[-1]["test_acc"] == pytest.approx(expected)
    assert trainer.evaluate()["test_acc"] == pytest.approx(expected)


@pytest.mark.parametrize("name", ["frozen", "meta"])
def test_record_weights_covers_every_sample(name: str, digits: TrainingSet, meta_set) -> None:
    if name == "frozen":
        torch.manual_seed(0)
        strategy: Method = FrozenWeighting(weighter=MWNet(hidden=8).requires_grad_(False))
    else:
        strategy = meta_strategy("clean", meta_set, kind="cmwnet")
    trainer = run(digits, strategy, schedule(1), None, record=True)
    weights = trainer.sample_weights
    assert weights.shape == (len(digits.y),)
    assert torch.isfinite(weights).all()
    assert ((weights >= 0) & (weights <= 1)).all()
    # without record_weights nothing is kept
    assert run(digits, PlainLoss(), schedule(1), None).sample_weights is None


# ----------------------------------------------------------------------------------------
# BatchNorm and the look-ahead


def test_meta_step_leaves_batchnorm_stats_to_the_real_forward(digits: TrainingSet, meta_set) -> None:
    # one batch per epoch: both runs take their single real forward at the same state
    data = TrainingSet(x=digits.x[:64], y=digits.y[:64], test_x=digits.test_x[:20],
                       test_y=digits.test_y[:20], num_classes=10)
    sched = schedule(1, batch_size=64)
    strategy = meta_strategy("clean", meta_set)
    w_before = copy.deepcopy(strategy.weighter.state_dict())
    meta = run(data, strategy, sched, None, bn=True)
    plain = run(data, PlainLoss(), sched, None, bn=True)
    init = mlp(bn=True)[2]
    meta_bn, plain_bn = meta.module[2], plain.module[2]
    assert isinstance(meta_bn, nn.BatchNorm1d)
    assert not torch.equal(meta_bn.running_mean, init.running_mean)  # the real forward counted
    assert torch.equal(meta_bn.running_mean, plain_bn.running_mean)
    assert torch.equal(meta_bn.running_var, plain_bn.running_var)
    assert int(meta_bn.num_batches_tracked) == int(plain_bn.num_batches_tracked) == 1
    assert meta.history[0]["meta_loss"] > 0  # a meta step did run ...
    assert not torch.equal(w_before["heads.weight"], strategy.weighter.state_dict()["heads.weight"])
    # ... and the weighted real step differs from the plain one
    assert not torch.equal(meta.module[1].weight, plain.module[1].weight)


# ----------------------------------------------------------------------------------------
# augmentation


def test_crop_flip_keeps_shapes_and_values() -> None:
    torch.manual_seed(0)
    x = torch.rand(8, 1, 28, 28) + 1.0
    out = crop_flip(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert not torch.equal(out, x)
    # every pixel is zero padding or a pixel of the same image
    for a, b in zip(out, x, strict=True):
        values = set(b.flatten().tolist()) | {0.0}
        assert set(a.flatten().tolist()) <= values
    # small images and vectors pass through unchanged
    small = torch.rand(3, 1, 8, 8)
    assert crop_flip(small) is small
    flat = torch.rand(3, 64)
    assert crop_flip(flat) is flat


def test_the_labelled_view_follows_schedule_augment() -> None:
    images = TrainingSet(x=torch.rand(20, 1, 28, 28) + 1.0, y=torch.arange(20) % 2,
                         test_x=torch.rand(4, 1, 28, 28), test_y=torch.tensor([0, 1, 0, 1]),
                         num_classes=2)
    index = torch.arange(8)
    for augment in (True, False):
        trainer = Trainer(mlp(), images, Schedule(epochs=1, augment=augment), device="cpu",
                          progress=False)
        batch = PlainLoss().collate(trainer, index, epoch=0, iteration=0, lr=0.1, warmup=False)
        assert torch.equal(batch.x, images.x[index]) != augment


def test_fit_with_augment(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    images = TrainingSet(x=torch.randn(40, 1, 28, 28, generator=gen), y=torch.arange(40) % 2,
                         test_x=torch.randn(6, 1, 28, 28, generator=gen),
                         test_y=torch.tensor([0, 1] * 3), num_classes=2)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 2))
    trainer = Trainer(model, images, Schedule(epochs=1, batch_size=20, augment=True),
                      device="cpu", progress=False)
    history = trainer.fit(PlainLoss())
    assert len(history) == 1 and math.isfinite(history[0]["train_loss"])


def test_reusing_the_lookahead_forward_changes_nothing_without_dropout(digits: TrainingSet, meta_set) -> None:
    """The real step on the look-ahead's kept forward (BatchNorm included) trains exactly as
    with a fresh forward."""
    runs = {}
    for reuse in (True, False):
        strategy = meta_strategy("clean", meta_set)
        strategy.config.reuse_forward = reuse
        runs[reuse] = (run(digits, strategy, schedule(2), None, bn=True), strategy)
    assert_same_tensors(runs[True][0].module.state_dict(), runs[False][0].module.state_dict())
    assert_same_tensors(runs[True][1].weighter.state_dict(), runs[False][1].weighter.state_dict())
    accs = {reuse: [row["test_acc"] for row in trainer.history] for reuse, (trainer, _) in runs.items()}
    assert accs[True] == accs[False]


def test_the_estimators_train_alike(digits: TrainingSet, meta_set) -> None:
    finals = {}
    for name in ("exact", "jvp"):
        strategy = meta_strategy("clean", meta_set)
        strategy.config.estimator = name
        trainer = run(digits, strategy, schedule(2), None, bn=True)
        assert strategy.provenance() == {"estimator": name}
        finals[name] = trainer.module.state_dict()
    for key, value in finals["exact"].items():
        if value.is_floating_point():
            torch.testing.assert_close(finals["jvp"][key], value, rtol=1e-3, atol=1e-4)


# ----------------------------------------------------------------------------------------
# the lagged real step


@pytest.mark.parametrize("estimator", ["exact", "jvp", "famus"])
def test_the_lagged_real_step_follows_the_weighter_before_its_update(
    estimator: str, digits: TrainingSet, meta_set,
) -> None:
    """One meta iteration on one batch (BatchNorm in the model): with ``lagged`` the weighter
    takes the same meta update as with ``updated``, and the model the step an ``updated`` run
    takes when its weighter does not move (meta lr 0), BatchNorm statistics included."""
    data = TrainingSet(x=digits.x[:64], y=digits.y[:64], test_x=digits.test_x[:20],
                       test_y=digits.test_y[:20], num_classes=10)
    sched = schedule(1, batch_size=64)
    runs = {}
    for name, real_step, meta_lr in (("lagged", "lagged", 1e-2), ("updated", "updated", 1e-2),
                                     ("unmoved", "updated", 0.0)):
        strategy = meta_strategy("clean", meta_set, kind="cmwnet", estimator=estimator,
                                 real_step=real_step, meta_lr=meta_lr)
        strategy.meta.famus = FamusConfig(expected_layers=1, matching_weight=0.0)
        runs[name] = (run(data, strategy, sched, None, bn=True, record=True), strategy)
    (lagged, lagged_s), (updated, updated_s), (unmoved, unmoved_s) = runs.values()
    for key, value in lagged_s.weighter.state_dict().items():
        torch.testing.assert_close(value, updated_s.weighter.state_dict()[key], rtol=1e-6, atol=1e-9)
    assert not torch.equal(lagged_s.weighter.state_dict()["heads.weight"],
                           unmoved_s.weighter.state_dict()["heads.weight"])
    for key, value in lagged.module.state_dict().items():
        torch.testing.assert_close(value, unmoved.module.state_dict()[key], rtol=1e-5, atol=1e-7)
    assert not torch.equal(lagged.module[1].weight, updated.module[1].weight)
    torch.testing.assert_close(lagged.sample_weights, unmoved.sample_weights, rtol=1e-6, atol=1e-7)
    assert lagged.history[0]["train_loss"] == pytest.approx(unmoved.history[0]["train_loss"], rel=1e-6)


def test_the_lagged_real_step_needs_what_it_reuses() -> None:
    with pytest.raises(ValueError, match="real_step must be one of"):
        MetaWeightingConfig(real_step="stale")
    with pytest.raises(ValueError, match="last-layer"):
        MetaWeightingConfig(real_step="lagged", estimator="last-layer")
    with pytest.raises(ValueError, match="reuse_forward"):
        MetaWeightingConfig(real_step="lagged", reuse_forward=False)
    with pytest.raises(ValueError, match="needs keep_forward"):
        BilevelProblem(model=mlp(), x=torch.zeros(1, 64), objective=dict, meta_x=torch.zeros(1, 64),
                       meta_y=torch.zeros(1, dtype=torch.long), meta_loss_fn=F.cross_entropy,
                       hyper_params=[], lr=0.1, keep_gradient=True)
    strategy = MetaWeighting(MetaWeightingConfig(real_step="lagged"), weighter=MWNet(hidden=4))
    for amp_dtype, world in ((torch.bfloat16, 1), (None, 2)):  # autocast (CUDA), torchrun
        with pytest.raises(ValueError, match="one process and no autocast"):
            strategy.setup(SimpleNamespace(amp_dtype=amp_dtype, world=world))


@pytest.mark.parametrize("kind", ["cmwnet", "cmwnet-sl"])
def test_a_lagged_run_with_a_still_weighter_trains_like_the_papers_step(kind: str, digits: TrainingSet,
                                                                      meta_set) -> None:
    """Meta lr 0 (the weighter never moves), a meta step every 2nd iteration, 2 epochs,
    BatchNorm: a lagged run takes the same real steps as an ``updated`` one, on meta and
    plain iterations alike (CMW-Net and CMW-Net-SL, its teacher and mixup included)."""
    trainers = {}
    for real_step in ("lagged", "updated"):
        if kind == "cmwnet":
            strategy = meta_strategy("clean", meta_set, kind="cmwnet", real_step=real_step, meta_lr=0.0)
            strategy.meta.meta_interval = 2
        else:
            strategy = sl_strategy(meta_set, real_step=real_step, meta_lr=0.0, meta_interval=2)
        trainers[real_step] = run(digits, strategy, schedule(2), None, bn=True, record=True)
    lagged, updated = trainers["lagged"], trainers["updated"]
    for key, value in lagged.module.state_dict().items():
        torch.testing.assert_close(value, updated.module.state_dict()[key], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(lagged.sample_weights, updated.sample_weights, rtol=1e-4, atol=1e-6)
    for a, b in zip(lagged.history, updated.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)


def test_a_precomputed_gradient_must_name_the_models_parameters(digits: TrainingSet) -> None:
    trainer = Trainer(mlp(), digits, schedule(1), device="cpu", progress=False)
    with pytest.raises(ValueError, match="does not have"):
        trainer._set_gradients({"no.such.weight": torch.zeros(1)})
