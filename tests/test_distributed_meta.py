"""Data-parallel meta-training under torchrun (2 gloo processes on CPU): the meta-gradient of a
sharded global batch equals the one-process gradient, every rank holds the same weighter after
meta steps, and an interrupted 2-process run resumes bit-identically."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_distributed import torchrun
from torch import nn

from weightzoo.bilevel.estimators import BilevelProblem, build_estimator
from weightzoo.data.partial import candidate_sets
from weightzoo.methods.base import RunContext
from weightzoo.methods.meta_weighting import (
    MetaConfig,
    MetaWeighting,
    MetaWeightingConfig,
    mean_cross_entropy,
    weighting_objective,
)
from weightzoo.methods.registry import build_method
from weightzoo.training.engine import Schedule, Trainer, TrainingSet
from weightzoo.weighting.nets import CMWNet
from weightzoo.weighting.sample_weighting import SampleWeighting

pytestmark = pytest.mark.slow
COUNTS = [30, 22, 14, 9, 6]
NORMS = ("sum", "mean", "detached_sum")


def problem_parts(norm: str) -> tuple[nn.Module, SampleWeighting, torch.Tensor, torch.Tensor,
                                      torch.Tensor, torch.Tensor]:
    """A BatchNorm-free model, a weighting, a global training batch (20) and meta batch (12)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, len(COUNTS))).double()
    weighter = CMWNet(num_families=3, hidden=16, normalization=norm).double()
    with torch.no_grad():
        weighter.shared[0].weight.mul_(10)  # weights that vary visibly with the loss
    weighting = SampleWeighting.fit(weighter, COUNTS)
    x, y = torch.randn(20, 6, dtype=torch.float64), torch.randint(0, len(COUNTS), (20,))
    mx, my = torch.randn(12, 6, dtype=torch.float64), torch.randint(0, len(COUNTS), (12,))
    return model, weighting, x, y, mx, my


def meta_gradient(norm: str, rank: int = 0, world: int = 1) -> tuple[torch.Tensor, ...]:
    model, weighting, x, y, mx, my = problem_parts(norm)
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    shard = slice(rank, None, world)
    result = build_estimator("jvp")(BilevelProblem(
        model=model, x=x[shard], objective=weighting_objective(weighting, y[shard]), meta_x=mx[shard],
        meta_y=my[shard], meta_loss_fn=mean_cross_entropy, optimizer=opt, lr=None,
        hyper_params=list(weighting.weighter.parameters()),
    ))
    return (torch.tensor(result.meta_loss), *result.grads)


def digits_like() -> TrainingSet:
    gen = torch.Generator().manual_seed(0)
    y = torch.cat([torch.full((n * 8,), c) for c, n in enumerate(COUNTS)])
    y = y[torch.randperm(len(y), generator=gen)]
    x = torch.randn(len(y), 6, generator=gen) + y[:, None].double().float()
    return TrainingSet(x, y, x[:40], y[:40], num_classes=len(COUNTS))


def meta_training(out: Path | None, epochs: int, resume: bool = False,
                  meta_lr: float = 1e-2) -> tuple[Trainer, MetaWeighting]:
    """648 samples in batches of 36: 18 full global batches, nothing dropped when sharded."""
    data = digits_like()
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, len(COUNTS)))
    config = MetaWeightingConfig(hidden=16, meta=MetaConfig(meta_lr=meta_lr, meta_batch_size=20))
    method = MetaWeighting(config, meta_x=data.x[-30:], meta_y=data.y[-30:])
    trainer = Trainer(model, data, Schedule(epochs=epochs, batch_size=36, lr=0.1, amp=False),
                      device="cpu", progress=False, out_dir=out)
    trainer.fit(method, resume=resume)
    return trainer, method


def worker(out: Path) -> None:
    torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank()
    grads = {norm: meta_gradient(norm, rank, 2) for norm in NORMS}
    trainer, method = meta_training(out / "straight", epochs=2)
    assert trainer.world == 2
    assert method.estimator is not None and method.estimator.name == "jvp"
    weighter = {k: v.clone() for k, v in method.weighter.state_dict().items()}
    meta_training(out / "resumed", epochs=1)
    resumed, resumed_method = meta_training(out / "resumed", epochs=2, resume=True)
    fixed, _ = meta_training(None, epochs=2, meta_lr=0.0)
    others = {name: other_method(name) for name in ("cmwnet-sl", "l2rw", "arl")}
    proden_q = proden_training()
    disagree = digits_like()
    if rank == 1:  # this rank's data knows a class the other does not
        disagree = TrainingSet(disagree.x, disagree.y.clone().fill_(0), disagree.test_x, disagree.test_y, 5)
    try:
        Trainer(nn.Linear(6, 5), disagree, Schedule(epochs=1, batch_size=36), device="cpu", progress=False)
        refusal = ""
    except ValueError as err:
        refusal = str(err)
    torch.save({"grads": grads, "weighter": weighter, "model": trainer.module.state_dict(),
                "history": trainer.history, "resumed_weighter": resumed_method.weighter.state_dict(),
                "resumed_model": resumed.module.state_dict(), "fixed_model": fixed.module.state_dict(),
                "others": others, "refusal": refusal, "proden_q": proden_q}, out / f"rank{rank}.pt")


def other_method(name: str) -> dict:
    """One epoch of another bilevel method under torchrun: its learner's state and history."""
    data = digits_like()
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, len(COUNTS)))
    method = build_method(name)
    method.bind(RunContext(len(COUNTS), data.x[-30:], data.y[-30:], seed=0))
    trainer = Trainer(model, data, Schedule(epochs=1, batch_size=36, lr=0.1, amp=False), device="cpu",
                      progress=False)
    trainer.fit(method)
    learner = method.learner.state_dict() if method.learner is not None else {}
    return {"learner": learner, "model": trainer.module.state_dict(), "history": trainer.history}


def proden_training() -> torch.Tensor:
    """Two epochs of PRODEN on candidate sets of ``digits_like``; its label distributions q."""
    data = digits_like()
    sets = candidate_sets(data.y.numpy(), len(COUNTS), "partial", 0.4, np.random.default_rng(0))
    data = TrainingSet(data.x, data.y, data.test_x, data.test_y, len(COUNTS),
                       candidates=torch.from_numpy(sets))
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, len(COUNTS)))
    method = build_method("proden")
    Trainer(model, data, Schedule(epochs=2, batch_size=36, lr=0.1, amp=False), device="cpu",
            progress=False).fit(method)
    return method.q


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp_meta")
    torchrun([str(Path(__file__).resolve()), str(out)], cwd=out)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.parametrize("norm", NORMS)
def test_sharded_meta_gradient_equals_one_process(ranks: list[dict], norm: str) -> None:
    """Each rank holds half the training and meta batch; the all-reduced meta-gradient is the
    one-process gradient of the whole batch (no BatchNorm: exact equality up to rounding)."""
    expected = meta_gradient(norm)
    for rank in ranks:
        for got, want in zip(rank["grads"][norm], expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-12)


def test_every_rank_holds_the_same_weighter_and_model(ranks: list[dict]) -> None:
    for key, value in ranks[0]["weighter"].items():
        assert torch.equal(value, ranks[1]["weighter"][key]), key
    for key, value in ranks[0]["model"].items():
        assert torch.equal(value, ranks[1]["model"][key]), key
    assert ranks[0]["history"][-1]["meta_loss"] > 0


def test_interrupted_two_process_run_resumes_bit_identically(ranks: list[dict]) -> None:
    for rank in ranks:
        for key, value in rank["weighter"].items():
            assert torch.equal(value, rank["resumed_weighter"][key]), key
        for key, value in rank["model"].items():
            assert torch.equal(value, rank["resumed_model"][key]), key


@pytest.mark.parametrize("name", ["cmwnet-sl", "l2rw", "arl"])
def test_the_other_bilevel_methods_run_data_parallel(ranks: list[dict], name: str) -> None:
    first, second = (rank["others"][name] for rank in ranks)
    assert first["history"][-1]["meta_loss"] > 0
    for part in ("learner", "model"):
        for key, value in first[part].items():
            assert torch.equal(value, second[part][key]), (part, key)


def test_ranks_with_different_data_are_refused(ranks: list[dict]) -> None:
    for rank in ranks:
        assert "the ranks disagree on the training data" in rank["refusal"]


def test_two_processes_train_like_one(ranks: list[dict]) -> None:
    """With the weighter held fixed (meta_lr 0) the sharded weighted training is the
    one-process training up to rounding; with meta steps the runs differ only in how the
    meta batches are sampled, and end up alike."""
    single, _ = meta_training(None, epochs=2, meta_lr=0.0)
    for key, value in single.module.state_dict().items():
        torch.testing.assert_close(ranks[0]["fixed_model"][key], value, rtol=1e-4, atol=1e-5)
    learned, _ = meta_training(None, epochs=2)
    assert abs(learned.history[-1]["test_acc"] - ranks[0]["history"][-1]["test_acc"]) < 0.25


def test_proden_ranks_share_every_update_of_q(ranks: list[dict]) -> None:
    """Each rank updates q for its shard and gathers the others': every rank holds all of q,
    the same as one process does (up to the rounding of the averaged gradients)."""
    assert torch.equal(ranks[0]["proden_q"], ranks[1]["proden_q"])
    torch.testing.assert_close(ranks[0]["proden_q"], proden_training(), rtol=1e-3, atol=1e-4)


def test_batch_that_does_not_divide_is_refused(tmp_path: Path) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text('[data]\ndataset = "digits"\n[method]\nname = "mwnet"\n'
                      '[schedule]\nepochs = 1\nbatch_size = 99\nwarmup_epochs = 0\n')
    with pytest.raises(AssertionError) as info:
        torchrun(["-m", "weightzoo.cli.main", "train", str(recipe), "--out", "o", "--no-progress",
                  "--device", "cpu"], cwd=tmp_path, timeout=120)
    assert "global batch size 99 does not divide by the world size 2" in str(info.value)


def test_cli_meta_training_under_torchrun(tmp_path: Path) -> None:
    output = torchrun(["-m", "weightzoo.cli.main", "train", "digits-sym40-mwnet", "--out", "run",
                       "--epochs", "2", "--set", "model.hidden=[32]", "--no-progress",
                       "--device", "cpu", "--json"], cwd=tmp_path)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["final"]["epochs"] == 2
    assert (tmp_path / "run" / "weighter" / "model.safetensors").exists()
    estimator = json.loads((tmp_path / "run" / "weighter" / "config.json").read_text())["metadata"]
    assert estimator["method"]["estimator"] == "jvp"
    assert output.count('"recipe": "digits-sym40-mwnet"') == 1  # only rank 0 prints


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
