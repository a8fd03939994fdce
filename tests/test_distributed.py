"""Data-parallel training under torchrun (CPU, gloo, 2 processes).

Run as a script under ``torch.distributed.run``, this file is the worker: every rank builds a
:class:`Trainer` with a frozen CMW-Net weighter over the same data, takes one step on its shard
of the first global batch and saves its families, reported loss and (DDP-averaged) gradients.
The tests compare them with the single-process weighted loss of the whole global batch.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from weightzoo import CMWNet, FrozenWeighting, Schedule, TaskFamilies, Trainer, TrainingSet, WeightedLoss
from weightzoo.artifact.format import save_artifact
from weightzoo.methods.base import Batch

WORLD = 2
BATCH = 25  # odd: the two shards differ in size (13 and 12)
MODES = ("plain", "sum", "mean", "detached_sum")
# Class counts with more than K = 3 distinct values, so that k-means really runs.
COUNTS = (40, 31, 22, 14, 9, 6, 4)
FEATURES = 8


def make_data() -> TrainingSet:
    gen = torch.Generator().manual_seed(0)
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(COUNTS)])
    y = y[torch.randperm(len(y), generator=gen)]
    x = torch.randn(len(y), FEATURES, generator=gen) + y[:, None].float()
    return TrainingSet(x, y, x[:20], y[:20], num_classes=len(COUNTS))


def make_model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(FEATURES, 16), nn.Tanh(), nn.Linear(16, len(COUNTS)))


def make_weighter(mode: str) -> CMWNet:
    torch.manual_seed(2)
    # A steeper first layer than the default init, so that weights vary visibly with the loss.
    weighter = CMWNet(num_families=3, normalization="sum" if mode == "plain" else mode)
    with torch.no_grad():
        weighter.shared[0].weight.mul_(20)
    return weighter


def schedule() -> Schedule:
    return Schedule(epochs=1, batch_size=BATCH, lr=0.1, momentum=0.0, weight_decay=0.0, amp=False)


def worker(out: Path) -> None:
    """One rank: a step of every mode on this rank's shard of the first global batch."""
    data = make_data()
    results = {}
    for mode in MODES:
        trainer = Trainer(make_model(), data, schedule(), device="cpu", progress=False)
        assert trainer.world == WORLD, "not launched by torchrun with 2 processes"
        strategy = FrozenWeighting(weighter=make_weighter(mode))
        strategy.setup(trainer)
        assert strategy.weighting is not None and strategy.weighting.families is not None
        index = trainer._batches(0, None, trainer.schedule.batch_size)[0]
        batch = Batch(x=data.x[index], y=data.y[index], index=index, epoch=0, iteration=0,
                      lr=0.1, warmup=mode == "plain")
        loss, _ = trainer._step(strategy, batch)
        families = strategy.weighting.families
        results[mode] = {
            "index": index, "loss": loss, "grads": [p.grad.clone() for p in trainer.module.parameters()],
            "centers": families.centers, "family_of_class": families.family_of_class.clone(),
            "class_counts": families.class_counts,
        }
    torch.save(results, out / f"rank{trainer.rank}.pt")


# ----------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def torchrun(args: list[str], cwd: Path, timeout: float = 240) -> str:
    """Run ``python -m torch.distributed.run --nproc_per_node 2 ARGS`` on 127.0.0.1; returns its
    output, fails the test on a non-zero exit or (killing the whole process group) a hang."""
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    if sys.platform == "linux":
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={WORLD}",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", *args]
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish in {timeout:.0f} s:\n{output[-4000:]}")
    assert proc.returncode == 0, f"torchrun exited with {proc.returncode}:\n{output[-4000:]}"
    return output


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp")
    torchrun([str(Path(__file__).resolve()), str(out)], cwd=out)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def reference(mode: str, index: torch.Tensor) -> tuple[float, list[torch.Tensor]]:
    """Single-process loss and gradients of the global batch ``index``."""
    data = make_data()
    model = make_model()
    x, y = data.x[index], data.y[index]
    if mode == "plain":
        loss = nn.functional.cross_entropy(model(x), y)
    else:
        loss = WeightedLoss.for_data(make_weighter(mode), labels=data.y, num_classes=data.num_classes)(
            model(x), y
        )
    loss.backward()
    return float(loss.detach()), [p.grad for p in model.parameters()]


def test_ranks_split_the_global_batch(rank_results: list[dict]) -> None:
    first = torch.randperm(sum(COUNTS), generator=torch.Generator().manual_seed(0))[:BATCH]
    for mode in MODES:
        shards = [r[mode]["index"] for r in rank_results]
        assert [len(s) for s in shards] == [13, 12]
        assert sorted(torch.cat(shards).tolist()) == sorted(first.tolist())


@pytest.mark.parametrize("mode", MODES[1:])
def test_ranks_fit_the_global_families(rank_results: list[dict], mode: str) -> None:
    expected = TaskFamilies.fit(COUNTS, 3, seed=0)
    assert len(set(expected.family_of_class.tolist())) == 3
    for result in rank_results:
        assert result[mode]["class_counts"] == COUNTS
        assert torch.equal(result[mode]["family_of_class"], expected.family_of_class)
        assert result[mode]["centers"] == pytest.approx(expected.centers, abs=1e-9)


@pytest.mark.parametrize("mode", MODES)
def test_global_loss_and_gradients_match_one_process(rank_results: list[dict], mode: str) -> None:
    index = torch.cat([r[mode]["index"] for r in rank_results])
    loss, grads = reference(mode, index)
    for result in rank_results:
        assert result[mode]["loss"] == pytest.approx(loss, abs=1e-6)
        for got, want in zip(result[mode]["grads"], grads, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_weighted_loss_differs_from_the_plain_mean(rank_results: list[dict]) -> None:
    """Guards the test itself: the weights are not all equal, so the modes are distinguishable."""
    index = torch.cat([r["sum"]["index"] for r in rank_results])
    assert abs(reference("sum", index)[0] - reference("plain", index)[0]) > 1e-3
    assert abs(reference("sum", index)[0] - reference("mean", index)[0]) > 1e-3


@pytest.mark.slow
def test_cli_apply_under_torchrun(tmp_path: Path) -> None:
    save_artifact(CMWNet(), tmp_path / "w")
    output = torchrun([
        "-m", "weightzoo.cli.main", "apply", "w", "--data", "digits", "--bias", "symmetric:0.4",
        "--epochs", "1", "--warmup-epochs", "0", "--weights-report", "--out", "D", "--no-progress",
        "--device", "cpu",
    ], cwd=tmp_path)
    assert output.count("applied to digits") == 1, output  # rank 0 reports, rank 1 is quiet
    out = tmp_path / "D"
    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison["runs"]["weighter"]["epochs"] == 1
    assert sorted(p.name for p in out.iterdir()) == ["comparison.json", "weighter", "weights.csv"]
    # Each rank weighs its own shards; the report holds all of them (but the last partial
    # batch, dropped when data-parallel).
    rows = (out / "weights.csv").read_text().splitlines()[1:]
    unweighted = sum(row.endswith(",nan") for row in rows)
    assert len(rows) == comparison["data"]["n_train"]
    assert unweighted == comparison["data"]["n_train"] % 100


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
