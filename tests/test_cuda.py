"""The CUDA path: meta-gradients, training methods, weighters and resume on a GPU.

Skipped without CUDA (CI has none); run on a GPU machine with
``python -m pytest tests/test_cuda.py``. ``scripts/device_check.sh`` runs it there with the
GPU benchmarks.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from weightzoo import CMWNet, WeightedLoss, strong_view
from weightzoo.bilevel.estimators import build_estimator
from weightzoo.methods.base import RunContext
from weightzoo.methods.fixmatch import FixMatch, FixMatchConfig, FixMatchMetaConfig
from weightzoo.methods.meta_weighting import MetaWeightingConfig, weighting_meta_gradient
from weightzoo.methods.registry import build_method
from weightzoo.pipeline import prepare_data
from weightzoo.training.engine import Schedule, Trainer
from weightzoo.training.joint import fit_jointly
from weightzoo.weighting.sample_weighting import SampleWeighting

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
COUNTS = [5, 5, 5, 20, 20, 20, 60, 60, 60, 60]


def conv_bn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 10))


@pytest.mark.parametrize("estimator", ["exact", "jvp", "famus"])
def test_meta_gradient_on_cuda_equals_cpu(estimator: str) -> None:
    """float64 on both devices: the weighter's meta-gradient agrees to 1e-9 (BatchNorm included;
    FaMUS: the same sampler initialisation and Gumbel noise on both)."""
    torch.manual_seed(0)
    model = conv_bn().double()
    x, y = torch.randn(16, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (16,))
    mx, my = torch.randn(12, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (12,))
    weighter = CMWNet(num_families=3).double()
    grads = {}
    for device in ("cpu", "cuda"):
        sw = SampleWeighting.fit(weighter, COUNTS).to(device)
        torch.manual_seed(1)  # FaMUS builds its samplers at the first call
        result = weighting_meta_gradient(
            model.to(device), sw, x.to(device), y.to(device), mx.to(device), my.to(device), lr=0.1,
            estimator=build_estimator(estimator))
        grads[device] = [g.cpu() for g in result.grads]
    for a, b in zip(grads["cpu"], grads["cuda"], strict=True):
        assert float((a - b).norm() / a.norm()) < 1e-9


@pytest.mark.parametrize("name", ["ce", "mwnet", "cmwnet", "cmwnet-sl", "l2rw", "arl", "gce"])
@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16"])
def test_every_method_trains_on_cuda(name: str, amp: bool) -> None:
    data = prepare_data("digits", "symmetric:0.4", seed=0, meta_per_class=10)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 10))
    method = build_method(name)
    method.bind(RunContext(10, data.meta_x, data.meta_y, seed=0))
    trainer = Trainer(model, data.train, Schedule(epochs=3, batch_size=100, warmup_epochs=1, amp=amp),
                      device="cuda", progress=False)
    history = trainer.fit(method)
    assert trainer.device.type == "cuda" and (trainer.amp_dtype is not None) == amp
    assert all(torch.isfinite(torch.tensor(row["train_loss"])) for row in history)
    assert history[-1]["test_acc"] > 0.5


@pytest.mark.parametrize("estimator", ["jvp", "famus"])
def test_the_lagged_real_step_trains_on_cuda(estimator: str) -> None:
    data = prepare_data("digits", "symmetric:0.4", seed=0, meta_per_class=10)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 10))
    method = build_method("cmwnet", MetaWeightingConfig(estimator=estimator, real_step="lagged"))
    method.bind(RunContext(10, data.meta_x, data.meta_y, seed=0))
    trainer = Trainer(model, data.train, Schedule(epochs=3, batch_size=100, warmup_epochs=1, amp=False),
                      device="cuda", progress=False)
    history = trainer.fit(method)
    assert all(torch.isfinite(torch.tensor(row["train_loss"])) for row in history)
    assert history[-1]["test_acc"] > 0.5 and history[-1]["meta_loss"] > 0


@pytest.mark.parametrize("config", [FixMatchConfig(), FixMatchMetaConfig(hidden=8)],
                         ids=["threshold", "meta"])
def test_fixmatch_trains_and_resumes_on_cuda(config, tmp_path: Path) -> None:
    data = prepare_data("digits", "none", seed=0).train

    def fit(out: Path, epochs: int, resume: bool = False) -> Trainer:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
        schedule = Schedule(epochs=epochs, batch_size=16, lr=0.03, warmup_epochs=1, amp=False)
        trainer = Trainer(model, data, schedule, device="cuda", progress=False, out_dir=out)
        trainer.fit(FixMatch(replace(config)), resume=resume)
        return trainer

    straight = fit(tmp_path / "a", 3)
    fit(tmp_path / "b", 2)
    resumed = fit(tmp_path / "b", 3, resume=True)
    assert straight.history[-1]["test_acc"] > 0.3
    for a, b in zip(straight.module.parameters(), resumed.module.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5)  # CUDA kernels may not be bit-deterministic


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16"])
def test_multi_source_meta_training_on_cuda(amp: bool, tmp_path: Path) -> None:
    """Two sources share one weighter on the GPU; an interrupted run resumes to the same end."""
    sources = [prepare_data("digits", bias, seed=i, meta_per_class=10)
               for i, bias in enumerate(("symmetric:0.4", "longtail:10"))]

    def fit(out: Path, epochs: int, resume: bool = False) -> tuple[list[Trainer], list]:
        torch.manual_seed(0)
        trainers, methods = [], []
        for i, data in enumerate(sources):
            model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU(),
                                  nn.Linear(64, 10))
            method = build_method("cmwnet", MetaWeightingConfig(normalization="mean"))
            method.bind(RunContext(10, data.meta_x, data.meta_y, seed=i))
            trainers.append(Trainer(model, data.train, Schedule(epochs=epochs, batch_size=100,
                                    warmup_epochs=1, amp=amp), device="cuda", seed=i, progress=False))
            methods.append(method)
        fit_jointly(trainers, methods, out, resume=resume)
        return trainers, methods

    straight, methods = fit(tmp_path / "a", 3)
    assert methods[1].weighter is methods[0].weighter
    assert next(methods[0].weighter.parameters()).device.type == "cuda"
    assert all(t.history[-1]["test_acc"] > 0.5 for t in straight)
    fit(tmp_path / "b", 2)
    resumed, resumed_methods = fit(tmp_path / "b", 3, resume=True)
    for a, b in zip(methods[0].weighter.parameters(), resumed_methods[0].weighter.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-4)  # CUDA kernels may not be bit-deterministic


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16"])
def test_meta_training_over_class_balanced_ce_on_cuda(amp: bool) -> None:
    data = prepare_data("digits", "longtail:20", seed=0, meta_per_class=10)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 10))
    method = build_method("cmwnet", MetaWeightingConfig(base_loss="class-balanced", normalization="mean"))
    method.bind(RunContext(10, data.meta_x, data.meta_y, seed=0))
    trainer = Trainer(model, data.train, Schedule(epochs=3, batch_size=100, warmup_epochs=1, amp=amp),
                      device="cuda", progress=False)
    history = trainer.fit(method)
    assert method.weighting.balance.device.type == "cuda"
    assert all(torch.isfinite(torch.tensor(row["train_loss"])) for row in history)
    assert history[-1]["test_acc"] > 0.3 and history[-1]["meta_loss"] > 0
    crit = WeightedLoss.for_data(method.weighter, class_counts=COUNTS, warmup_epochs=0).cuda()
    logits = torch.randn(32, 10, device="cuda", requires_grad=True)
    crit(logits, torch.randint(0, 10, (32,), device="cuda")).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("amp", [False, True])
def test_deferred_rebalancing_of_a_learned_loss_on_cuda(amp: bool) -> None:
    from weightzoo import LearnedRobustLoss
    from weightzoo.methods.frozen import FrozenLoss

    data = prepare_data("digits", "longtail:20+symmetric:0.4", seed=0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    # a learned GCE from the first step needs ~10 epochs on this small noisy long tail
    # (on the CPU: 0.54 after 12, 0.19 after 3)
    schedule = Schedule(epochs=12, batch_size=100, milestones=[6], rebalance="deferred", amp=amp)
    trainer = Trainer(model, data.train, schedule, device="cuda", progress=False)
    method = FrozenLoss(loss=LearnedRobustLoss.from_pretrained("arl-gce-fmnist-sym40"))
    history = trainer.fit(method)
    assert trainer.class_weights.device.type == "cuda"
    assert all(torch.isfinite(torch.tensor(row["train_loss"])) for row in history)
    assert history[-1]["test_acc"] > 0.4
    batch = method.collate(trainer, torch.arange(32), epoch=6, iteration=0, lr=0.01, warmup=False)
    (term,) = method.step(trainer, batch).terms.values()
    expected = method.loss(trainer.model(batch.x).float(), batch.y) * trainer.class_weights[batch.y]
    torch.testing.assert_close(term.losses, expected)


def test_weighted_loss_and_strong_view_stay_on_the_device() -> None:
    crit = WeightedLoss.from_pretrained("cmwnet-fmnist-asym40", class_counts=COUNTS).cuda()
    logits = torch.randn(32, 10, device="cuda", requires_grad=True)
    y = torch.randint(0, 10, (32,), device="cuda")
    loss = crit(logits, y)
    loss.backward()
    assert loss.device.type == "cuda" and crit.last_weights.device.type == "cuda"
    reference = WeightedLoss.from_pretrained("cmwnet-fmnist-asym40", class_counts=COUNTS)
    assert torch.allclose(reference(logits.detach().cpu(), y.cpu()), loss.detach().cpu(), atol=1e-5)
    images = torch.randn(64, 3, 32, 32, device="cuda")
    out = strong_view(images)
    assert out.device.type == "cuda" and out.shape == images.shape and torch.isfinite(out).all()
    assert F.mse_loss(out, images) > 0
