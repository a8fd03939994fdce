"""The training engine: one loop for every training method (see ``weightzoo.methods``), on CPU
or CUDA (mixed precision), in one process or data-parallel under torchrun.

A :class:`~weightzoo.methods.base.Method` turns a batch into named loss terms (and the
weights it used); the engine does everything else: seeded batching, the SGD step with the
multi-step learning-rate schedule, evaluation (overall, per class, head/medium/tail),
checkpoints every epoch and bit-identical resume, progress bars and the metrics history.
"""

from __future__ import annotations

import hashlib
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from weightzoo import distributed
from weightzoo.losses import class_balanced_weights
from weightzoo.methods.base import Batch, Method, StepOutput
from weightzoo.training.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from weightzoo.weighting.reduction import safe_divide

REBALANCE_MODES = ("none", "deferred")


@dataclass
class Schedule:
    """SGD schedule.  The lr is multiplied by ``gamma`` at each epoch in ``milestones``.

    warmup_epochs: epochs of plain CE before a method's weighting (and meta steps) start.
    rebalance: ``"none"``, or ``"deferred"``: deferred re-balancing (DRW, Cao et al. 2019):
        from the first milestone on, every sample's loss is multiplied by the class-balanced
        weight of its label (Cui et al. 2019, of the training set's class counts), so the
        model learns its features from the plain loss and its class balance at the low lr.
        For the methods whose ``rebalances`` is True (plain losses, frozen artifacts).
    augment: the labelled view is a random crop (4-pixel zero padding) + horizontal flip
        for images >= 28 px (``weightzoo.training.views.crop_flip``).
    amp: mixed precision on CUDA (bf16 where supported, else fp16 with loss scaling).
    """

    epochs: int = 20
    batch_size: int = 100
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    warmup_epochs: int = 0
    rebalance: str = "none"
    augment: bool = False
    amp: bool = True

    def __post_init__(self) -> None:
        if self.rebalance not in REBALANCE_MODES:
            raise ValueError(f"schedule.rebalance must be one of {REBALANCE_MODES}, got {self.rebalance!r}")
        if self.rebalance == "deferred" and not (self.milestones and self.warmup_epochs
                                                 <= min(self.milestones) < self.epochs):
            raise ValueError("schedule.rebalance = 'deferred' starts at the first lr milestone: "
                             "give the schedule a milestone after the warm-up and before the last epoch")

    def lr_at(self, epoch: int) -> float:
        return self.lr * self.gamma ** sum(1 for m in self.milestones if epoch >= m)

    def rebalancing(self, epoch: int) -> bool:
        """Whether ``epoch`` (0-based) weights its losses by class (see ``rebalance``)."""
        return self.rebalance == "deferred" and epoch >= min(self.milestones)


@dataclass
class TrainingSet:
    """x (N, ...), y (N,) labels as given (possibly noisy); test split; optional clean
    labels (N,) for reports when the bias was injected (never read by training); optional
    candidate-label sets (N, C) bool of partial-label data."""

    x: torch.Tensor
    y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    clean_y: torch.Tensor | None = None
    candidates: torch.Tensor | None = None

    @property
    def class_counts(self) -> np.ndarray:
        return np.bincount(self.y.numpy(), minlength=self.num_classes)

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"{len(self.x)} training inputs but {len(self.y)} labels")
        if self.candidates is not None and tuple(self.candidates.shape) != (len(self.y), self.num_classes):
            raise ValueError(f"candidate sets of shape {tuple(self.candidates.shape)} for "
                             f"{len(self.y)} samples of {self.num_classes} classes")


def resolve_device(device: str | None) -> torch.device:
    """``auto``/None -> CUDA when present (the local rank's GPU under torchrun), else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"unknown device {device!r} ({err})") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return resolved


class Trainer:
    """Trains ``model`` on ``data`` with a training method; see :meth:`fit`.

    out_dir: where ``checkpoint.pt`` is written after every epoch (None: no checkpoints).
    record_weights: keep the last weight of every training sample (for weight reports).
    """

    def __init__(
        self, model: nn.Module, data: TrainingSet, schedule: Schedule, *,
        device: str | torch.device | None = None, seed: int = 0, out_dir: str | Path | None = None,
        progress: bool = True, record_weights: bool = False, desc: str = "train",
    ) -> None:
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        distributed.init_from_env(self.device)
        self.rank, self.world = distributed.rank_and_world()
        if self.device.type == "cuda" and self.world > 1:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.data, self.schedule, self.seed = data, schedule, seed
        labels = data.y.double()
        if self.world > 1 and not distributed.agree([
            data.num_classes, len(data.y), float(labels.sum()), float((labels * labels).sum()),
            float(labels.max()) if len(labels) else -1.0,
        ]):
            raise ValueError("the ranks disagree on the training data (classes, samples or labels): "
                             "every rank must load the same data set")
        self.module = model.to(self.device)
        self.model: nn.Module = self.module
        if self.world > 1:
            self.model = nn.parallel.DistributedDataParallel(
                self.module, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.optimizer = torch.optim.SGD(
            self.module.parameters(), lr=schedule.lr, momentum=schedule.momentum,
            weight_decay=schedule.weight_decay, nesterov=schedule.nesterov,
        )
        self.amp_dtype = self._amp_dtype()
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=self.amp_dtype == torch.float16
        )
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.progress = progress and self.rank == 0
        self.desc = desc
        self.history: list[dict[str, Any]] = []
        self.sample_weights = torch.full((len(data.y),), float("nan")) if record_weights else None
        # data-parallel: which samples this rank weighted this epoch (merged at the epoch's end)
        self._weighted_here = torch.zeros(len(data.y), dtype=torch.bool) if record_weights else None
        self.start_epoch = 0
        self.iteration = 0
        self.class_weights: torch.Tensor | None = None  # (C,), for schedule.rebalance

    def _amp_dtype(self) -> torch.dtype | None:
        if not self.schedule.amp or self.device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def autocast(self) -> torch.autocast:
        """The forward-pass autocast context (disabled on CPU or without amp)."""
        return torch.autocast(
            self.device.type, dtype=self.amp_dtype or torch.float32,
            enabled=self.amp_dtype is not None,
        )

    def global_class_counts(self) -> np.ndarray:
        """Per-class counts (C,) of the whole training set, summed over the ranks' shards."""
        shard = self.data.y[self.rank :: self.world]
        local = torch.bincount(shard, minlength=self.data.num_classes).to(self.device)
        return distributed.all_reduce_sum(local).cpu().numpy()

    def prepare(self, method: Method) -> None:
        """Set ``method`` up for this trainer (before any epoch; ``fit`` and multi-source
        training call it): the schedule checked against it (``Method.check_schedule``), then
        the class weights of ``schedule.rebalance``."""
        method.check_schedule(self.schedule)
        if self.schedule.rebalance != "none":
            weights = class_balanced_weights(self.global_class_counts())
            self.class_weights = weights.float().to(self.device)
        method.setup(self)

    def rebalanced(self, losses: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Per-sample losses (B,) of ``batch``, times their labels' class-balanced weights
        where the schedule re-balances this epoch (``Schedule.rebalance``); else as given."""
        if not self.schedule.rebalancing(batch.epoch):
            return losses
        if self.class_weights is None:
            raise RuntimeError("schedule.rebalance is set but the trainer was not prepared: "
                               "call trainer.prepare(method) (fit does) before training")
        return losses * self.class_weights[batch.y].to(losses.dtype)

    # ----------------------------------------------------------------------------------
    def fit(self, method: Method, resume: bool = False) -> list[dict[str, Any]]:
        """Run all epochs; with ``resume``, continue from ``out_dir/checkpoint.pt`` if it exists
        (a finished run then only reloads its history)."""
        self.prepare(method)
        if resume and self.out_dir is None:
            raise ValueError("resume needs an output directory (where checkpoint.pt is written)")
        if resume and (self.out_dir / CHECKPOINT_NAME).exists():
            path = self.out_dir / CHECKPOINT_NAME
            self.restore(method, load_checkpoint(path), path)
        for epoch in range(self.start_epoch, self.schedule.epochs):
            run = EpochRun(self, method, epoch)
            while run.step():
                pass
            self.history.append(run.finish())
            if self.out_dir is not None:
                rank_rngs = distributed.gather_objects(torch.get_rng_state())  # every rank's stream
                if self.rank == 0:
                    save_checkpoint(self.out_dir / CHECKPOINT_NAME,
                                    {**self.checkpoint_state(method, epoch), "rank_rng": rank_rngs})
                distributed.barrier()
        return self.history

    def _step(self, method: Method, batch: Batch) -> tuple[float, dict[str, torch.Tensor]]:
        """One real step; returns the (global) training loss and the step's logs."""
        with self.autocast():
            output = method.step(self, batch)
        loss = self._objective(output)
        nonfinite = sum((~torch.isfinite(t.losses)).sum() for t in output.terms.values())
        reported, bad = distributed.all_reduce_sum(
            torch.stack([loss.detach().float() / self.world, torch.as_tensor(nonfinite).float()])
        ).tolist()  # one host sync per step
        if bad or not math.isfinite(reported):
            what = f"{int(bad)} non-finite per-sample losses" if bad else "a non-finite training loss"
            raise FloatingPointError(
                f"{what} at epoch {batch.epoch + 1}, iteration {batch.iteration} (NaN / inf inputs, "
                "or diverged? lower the learning rate); no step was taken"
            )
        weights = output.weights
        if self.sample_weights is not None and weights is not None:
            self.sample_weights[batch.index] = weights.detach().float().cpu()
            if self._weighted_here is not None:
                self._weighted_here[batch.index] = True
        self.optimizer.zero_grad(set_to_none=True)
        if output.grads is None:
            self.scaler.scale(loss).backward()
        else:
            self._set_gradients(output.grads)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        method.after_step(self, batch, output)
        logs = {key: torch.as_tensor(value).detach().float() for key, value in output.logs.items()}
        if len(output.terms) > 1:
            logs.update({f"{name}_loss": safe_divide(*term.terms()).detach().float()
                         for name, term in output.terms.items()})
        return reported, logs

    def _set_gradients(self, grads: dict[str, torch.Tensor | None]) -> None:
        """Give the model's parameters the gradient a method computed (by parameter name)."""
        if self.world > 1 or self.scaler.is_enabled():
            raise ValueError("a method's precomputed gradient needs one process and no fp16 loss scaling")
        params = dict(self.module.named_parameters())
        if unknown := set(grads) - set(params):
            raise ValueError("a method's gradient names parameters the model does not have: "
                             f"{sorted(unknown)[:3]}")
        for name, param in params.items():
            grad = grads.get(name)
            param.grad = None if grad is None else grad.to(param.dtype)

    def _objective(self, output: StepOutput) -> torch.Tensor:
        """Sum over terms of coef * numerator / global denominator.

        Data-parallel: every rank divides by the global denominator and DDP averages the
        gradients over ranks, so rank losses are scaled by the world size.
        """
        if not output.terms:
            raise ValueError("a method's step returned no loss terms")
        total = None
        for term in output.terms.values():
            numerator, denominator = term.terms()
            part = term.coef * safe_divide(numerator, distributed.all_reduce_sum(denominator.detach()))
            total = part if total is None else total + part
        return total * self.world

    def _share_sample_weights(self) -> None:
        """Data-parallel: each rank recorded the weights of its own shards only; give every rank
        (rank 0 writes the reports and checkpoints) the weights of all samples seen this epoch."""
        if self.sample_weights is None or self._weighted_here is None or self.world == 1:
            return
        mine = self._weighted_here.to(self.device)
        values = torch.where(mine, self.sample_weights.to(self.device), torch.zeros((), device=self.device))
        seen = distributed.all_reduce_sum(mine.float()).cpu() > 0
        merged = distributed.all_reduce_sum(values).cpu()
        self.sample_weights = torch.where(seen, merged, self.sample_weights)
        self._weighted_here.zero_()

    def _batches(self, epoch: int, pool: torch.Tensor | None, size: int) -> list[torch.Tensor]:
        """This rank's index batches for ``epoch``: a seeded permutation of ``pool`` (None: the
        whole training set) in global batches of ``size``, each split over ranks (the last
        partial batch is dropped when data-parallel)."""
        n = len(self.data.y) if pool is None else len(pool)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=generator)
        if pool is not None:
            order = pool[order]
        chunks = list(order.split(size))
        if self.world > 1 and len(chunks) > 1 and len(chunks[-1]) < size:
            chunks.pop()
        return [c[self.rank :: self.world] for c in chunks]

    # ----------------------------------------------------------------------------------
    def predict(self, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """Predicted classes (N,) for inputs x (N, ...), in eval mode."""
        was_training = self.module.training
        self.module.eval()
        preds = []
        with torch.no_grad(), self.autocast():
            for chunk in x.split(batch_size):
                preds.append(self.module(chunk.to(self.device)).argmax(1).cpu())
        self.module.train(was_training)
        return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)

    def evaluate(self) -> dict[str, Any]:
        """Test accuracy overall, per class, and for head/medium/tail classes (the thirds of
        the classes ordered by training count, largest first)."""
        return accuracy_report(
            self.predict(self.data.test_x), self.data.test_y, self.data.class_counts
        )

    # ----------------------------------------------------------------------------------
    def _run_identity(self, method: Method) -> dict[str, Any]:
        """What a checkpoint must share with the run resuming it: method, seed, schedule
        (the number of epochs may grow) and the training data (shape and labels)."""
        schedule = asdict(self.schedule)
        del schedule["epochs"]
        if schedule["rebalance"] == "none":  # as checkpoints written before it existed say
            del schedule["rebalance"]
        labels = self.data.y.detach().cpu().numpy().astype(np.int64)
        return {
            "method": method.identity, "seed": self.seed, "schedule": schedule,
            "train_shape": list(self.data.x.shape),
            "labels": hashlib.sha256(labels.tobytes()).hexdigest(),
        }

    def restore(self, method: Method, state: dict[str, Any], path: Path) -> None:
        """Continue from a checkpoint's ``state`` (read from ``path``, named in errors): refused
        when another run wrote it or it has more epochs than the schedule."""
        if "sources" in state:
            raise ValueError(f"{path}: a multi-source checkpoint ([[sources]]); resume it with the same "
                             "multi-source recipe, or pick another output directory")
        self._check_same_run(path, state, method)
        done = int(state["epoch"]) + 1
        if done > self.schedule.epochs:
            raise ValueError(
                f"{path}: the run has {done} finished epochs, more than the {self.schedule.epochs} "
                f"asked for; resume with epochs >= {done}, or start afresh elsewhere"
            )
        self._load(method, state)

    def _check_same_run(self, path: Path, state: dict[str, Any], method: Method) -> None:
        saved = state.get("run") or {}
        current = self._run_identity(method)
        differ = sorted(k for k in current.keys() | saved.keys() if current.get(k) != saved.get(k))
        if differ:
            raise ValueError(
                f"{path}: written by a different run ({', '.join(differ)} differ); resume with "
                "the same settings, or pick another output directory"
            )

    def checkpoint_state(self, method: Method, epoch: int) -> dict[str, Any]:
        """Everything a resumed run needs after ``epoch`` (model, optimizer, method, history, RNG)."""
        state = {
            "run": self._run_identity(method),
            "epoch": epoch, "iteration": self.iteration,
            "model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(), "method": method.state_dict(),
            "history": self.history, "rng": torch.get_rng_state(),
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        if self.sample_weights is not None:
            state["sample_weights"] = self.sample_weights
        return state

    def _load(self, method: Method, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        method.load_state_dict(state["method"])
        self.history = list(state["history"])
        self.start_epoch = int(state["epoch"]) + 1
        self.iteration = int(state["iteration"])
        rank_rngs = state.get("rank_rng") or []
        torch.set_rng_state(rank_rngs[self.rank] if len(rank_rngs) == self.world else state["rng"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        if self.sample_weights is not None and "sample_weights" in state:
            self.sample_weights = state["sample_weights"]


class EpochRun:
    """One epoch of a trainer, a step at a time (several trainers can take turns; see
    ``weightzoo.training.joint``): the lr set, the method's epoch start and the seeded
    batches at construction; :meth:`step` runs the next batch, :meth:`finish` evaluates and
    returns the epoch's metrics row. ``position``: the progress bar's line (one per trainer;
    None: the next free one)."""

    def __init__(self, trainer: Trainer, method: Method, epoch: int, position: int | None = None) -> None:
        self.trainer, self.method, self.epoch = trainer, method, epoch
        self.started = time.perf_counter()
        self.lr = trainer.schedule.lr_at(epoch)
        for group in trainer.optimizer.param_groups:
            group["lr"] = self.lr
        trainer.model.train()
        method.on_epoch_start(trainer, epoch)
        batches = trainer._batches(epoch, *method.batch_pool(trainer))
        self.bar = tqdm(
            batches, desc=f"{trainer.desc} {epoch + 1}/{trainer.schedule.epochs}", file=sys.stderr,
            disable=not trainer.progress, leave=False, dynamic_ncols=True, position=position,
        )
        self.batches = iter(self.bar)
        self.total, self.count = 0.0, 0
        self.logs: dict[str, list[torch.Tensor]] = {}

    def step(self) -> bool:
        """Train on the next batch; False (nothing done) once the epoch has none left."""
        index = next(self.batches, None)
        if index is None:
            return False
        trainer = self.trainer
        batch = self.method.collate(trainer, index, epoch=self.epoch, iteration=trainer.iteration,
                                    lr=self.lr, warmup=self.epoch < trainer.schedule.warmup_epochs)
        loss, step_logs = trainer._step(self.method, batch)
        self.total, self.count = self.total + loss, self.count + 1
        for key, value in step_logs.items():
            self.logs.setdefault(key, []).append(value)
        trainer.iteration += 1
        self.bar.set_postfix(loss=f"{loss:.4f}")
        return True

    def finish(self) -> dict[str, Any]:
        """The epoch's metrics row: losses and logs, the method's metrics, test accuracy."""
        trainer = self.trainer
        self.bar.close()
        trainer._share_sample_weights()
        row = {"epoch": self.epoch + 1, "lr": self.lr, "train_loss": self.total / max(self.count, 1)}
        # the step's logs stay on the device until here: one host transfer per key and epoch
        row.update({key: float(torch.stack(values).double().mean()) for key, values in self.logs.items()})
        row.update(self.method.epoch_metrics())
        row.update(trainer.evaluate())
        row["seconds"] = round(time.perf_counter() - self.started, 3)
        if trainer.progress:
            tqdm.write(
                f"{trainer.desc} epoch {self.epoch + 1}/{trainer.schedule.epochs}: loss "
                f"{row['train_loss']:.4f} test acc {row['test_acc']:.4f}", file=sys.stderr,
            )
        return row


def accuracy_report(
    pred: torch.Tensor, target: torch.Tensor, train_counts: np.ndarray
) -> dict[str, Any]:
    """Accuracy overall, per class, and over head/medium/tail class thirds (by train count)."""
    num_classes = len(train_counts)
    correct = (pred == target).float()
    per_class = []
    for c in range(num_classes):
        mask = target == c
        per_class.append(float(correct[mask].mean()) if bool(mask.any()) else float("nan"))
    order = np.argsort(-np.asarray(train_counts), kind="stable")
    thirds = np.array_split(order, 3) if num_classes >= 3 else [order, order[:0], order[:0]]
    report: dict[str, Any] = {
        "test_acc": float(correct.mean()) if len(correct) else float("nan"),
        "per_class_acc": per_class,
    }
    for name, classes in zip(("head", "medium", "tail"), thirds, strict=True):
        values = [per_class[c] for c in classes if not math.isnan(per_class[c])]
        report[f"{name}_acc"] = float(np.mean(values)) if values else float("nan")
    return report
