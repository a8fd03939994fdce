"""Loss strategies for the training engine.

- :class:`PlainLoss`: CE or a robust-loss baseline (focal, GCE, SCE, class-balanced);
- :class:`FrozenWeighting`: a pretrained weighter applied frozen (CMW-Net Algorithm 3);
- :class:`MetaWeighting`: MW-Net / CMW-Net meta-training (Algorithm 1): a look-ahead meta
  step on the weighter every ``meta_interval`` iterations, then the real step with weights
  from the updated weighter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from weightzoo import distributed
from weightzoo.engine import Batch, Strategy, Trainer
from weightzoo.families import TaskFamilies
from weightzoo.loss import WeightedLoss
from weightzoo.losses import per_sample_loss
from weightzoo.meta import LookaheadConfig, meta_step, weigh
from weightzoo.metaset import ModelEMA, lowest_loss_indices, mixup
from weightzoo.weighters import CMWNet


def global_class_counts(trainer: Trainer) -> np.ndarray:
    """Per-class counts (C,) of the whole training set, summed over the ranks' shards."""
    shard = trainer.data.y[trainer.rank :: trainer.world]
    local = torch.bincount(shard, minlength=trainer.data.num_classes).to(trainer.device)
    return distributed.all_reduce_sum(local).cpu().numpy()


class PlainLoss(Strategy):
    """Mean of a per-sample loss: ``ce``, ``focal``, ``gce``, ``sce`` or ``class-balanced``."""

    def __init__(self, loss: str = "ce", **params: Any) -> None:
        self.name, self.params = loss, params
        self.counts: np.ndarray | None = None

    def setup(self, trainer: Trainer) -> None:
        if self.name == "class-balanced":
            self.counts = global_class_counts(trainer)

    def losses(self, trainer: Trainer, batch: Batch) -> tuple[torch.Tensor, None, str]:
        logits = trainer.model(batch.x).float()
        extra = {"class_counts": self.counts} if self.counts is not None else {}
        return per_sample_loss(self.name, logits, batch.y, **extra, **self.params), None, "mean"


class FrozenWeighting(Strategy):
    """A pretrained weighter, frozen, with families re-fitted on this data's class counts."""

    def __init__(self, weighter: CMWNet, family_seed: int = 0) -> None:
        self.name = f"weighter:{weighter.config.kind}"
        self.weighter, self.family_seed = weighter, family_seed
        self.criterion: WeightedLoss | None = None

    def setup(self, trainer: Trainer) -> None:
        self.criterion = WeightedLoss.for_data(
            self.weighter, class_counts=global_class_counts(trainer),
            num_classes=trainer.data.num_classes, seed=self.family_seed,
        ).to(trainer.device)

    def losses(
        self, trainer: Trainer, batch: Batch
    ) -> tuple[torch.Tensor, torch.Tensor | None, str]:
        assert self.criterion is not None, "setup() was not called"
        losses = per_sample_loss("ce", trainer.model(batch.x).float(), batch.y)
        if batch.warmup:
            return losses, None, "mean"
        # labels were range-checked when the data was prepared
        weights = self.criterion.weights(losses, batch.y, trainer.data.num_classes, checked=True)
        return losses, weights, self.weighter.config.normalization


@dataclass
class MetaConfig:
    """Meta-training options (CMW-Net §3.4, §4.2).

    meta_lr / meta_weight_decay: Adam on the weighter (~1e-3 for noise, 1e-5..1e-4 imbalance).
    meta_interval: a meta step every k iterations.
    meta_batch_size: meta samples per meta step (drawn from the meta set).
    source: ``clean`` (a held-out clean balanced set, given to the strategy) or ``train``
        (rebuilt each epoch: the ``per_class`` lowest-loss samples per noisy class scored by
        an EMA model with decay ``ema_decay``).
    mixup_alpha: > 0 mixes meta batches with lambda ~ Beta(alpha, alpha).
    """

    meta_lr: float = 1e-3
    meta_weight_decay: float = 1e-4
    meta_interval: int = 1
    meta_batch_size: int = 100
    include_momentum: bool = False
    include_weight_decay: bool = False
    source: str = "clean"
    per_class: int = 10
    mixup_alpha: float = 0.0
    ema_decay: float = 0.999


class MetaWeighting(Strategy):
    """Meta-learn ``weighter`` while training the model (MW-Net / CMW-Net Algorithm 1).

    meta_x (M, ...), meta_y (M,): the clean meta set when ``config.source == 'clean'``.
    """

    def __init__(
        self, weighter: CMWNet, config: MetaConfig, meta_x: torch.Tensor | None = None,
        meta_y: torch.Tensor | None = None, family_seed: int = 0,
    ) -> None:
        if config.source not in ("clean", "train"):
            raise ValueError(f"unknown meta source {config.source!r}; use 'clean' or 'train'")
        if config.source == "clean" and (meta_x is None or meta_y is None or len(meta_y) == 0):
            raise ValueError("a clean meta set (meta_x, meta_y) is required for source='clean'")
        if config.meta_interval < 1:
            raise ValueError("meta_interval must be >= 1")
        self.name = f"meta:{weighter.config.kind}"
        self.weighter, self.config, self.family_seed = weighter, config, family_seed
        self.meta_x, self.meta_y = meta_x, meta_y
        self.meta_index: torch.Tensor | None = None
        self.families: TaskFamilies | None = None
        self.ema: ModelEMA | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._meta_losses: list[float] = []

    def setup(self, trainer: Trainer) -> None:
        if trainer.world > 1:
            raise ValueError("meta-training runs in a single process; apply weighters with torchrun")
        self.weighter.to(trainer.device).train().requires_grad_(True)
        self.optimizer = torch.optim.Adam(
            self.weighter.parameters(), lr=self.config.meta_lr,
            weight_decay=self.config.meta_weight_decay,
        )
        self.families = TaskFamilies.fit(
            trainer.data.class_counts, self.weighter.num_families, seed=self.family_seed
        ).to(trainer.device)
        if self.config.source == "train":
            self.ema = ModelEMA(trainer.module, self.config.ema_decay)

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        if self.ema is not None:
            self.meta_index = lowest_loss_indices(
                self.ema.module, trainer.data.x, trainer.data.y, self.config.per_class
            )
            self.meta_x, self.meta_y = trainer.data.x[self.meta_index], trainer.data.y[self.meta_index]
        self._meta_losses = []

    def _meta_batch(self, trainer: Trainer) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.meta_x is not None and self.meta_y is not None
        size = min(self.config.meta_batch_size, len(self.meta_y))
        pick = torch.randperm(len(self.meta_y))[:size]
        x, y = self.meta_x[pick].to(trainer.device), self.meta_y[pick].to(trainer.device)
        if self.config.mixup_alpha > 0:
            soft = F.one_hot(y, trainer.data.num_classes).float()
            return mixup(x, soft, self.config.mixup_alpha)
        return x, y

    def losses(
        self, trainer: Trainer, batch: Batch
    ) -> tuple[torch.Tensor, torch.Tensor | None, str]:
        assert self.families is not None and self.optimizer is not None, "setup() was not called"
        families = self.families(batch.y) if self.weighter.num_families > 1 else None
        num_classes = trainer.data.num_classes
        if not batch.warmup and batch.iteration % self.config.meta_interval == 0:
            meta_x, meta_y = self._meta_batch(trainer)
            result = meta_step(
                trainer.module, self.weighter, self.optimizer, batch.x, batch.y, meta_x, meta_y,
                lr=batch.lr, families=families, num_classes=num_classes,
                normalization=self.weighter.config.normalization, optimizer=trainer.optimizer,
                config=LookaheadConfig(self.config.include_momentum, self.config.include_weight_decay),
            )
            self._meta_losses.append(result.meta_loss)
        losses = per_sample_loss("ce", trainer.model(batch.x).float(), batch.y)
        if batch.warmup:
            return losses, None, "mean"
        weights = weigh(self.weighter, losses, families, num_classes)
        return losses, weights, self.weighter.config.normalization

    def after_step(self, trainer: Trainer) -> None:
        if self.ema is not None:
            self.ema.update(trainer.module)

    def epoch_metrics(self) -> dict[str, float]:
        if not self._meta_losses:
            return {}
        return {"meta_loss": float(np.mean(self._meta_losses))}

    def state_dict(self) -> dict[str, Any]:
        assert self.optimizer is not None
        state: dict[str, Any] = {
            "weighter": self.weighter.state_dict(), "optimizer": self.optimizer.state_dict(),
        }
        if self.ema is not None:
            state["ema"] = self.ema.module.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        assert self.optimizer is not None
        self.weighter.load_state_dict(state["weighter"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None and "ema" in state:
            self.ema.module.load_state_dict(state["ema"])
