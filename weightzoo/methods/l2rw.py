"""``l2rw``: Learning to Reweight Examples (Ren et al. 2018, §3, Algorithm 1).

Per batch, no weighting function: perturb each sample's loss by eps_i (all 0), take the
virtual step on sum_i eps_i l_i, and read the meta loss's gradient g_i = dL^meta/deps_i at
eps = 0; the weights are w_i = max(-g_i, 0) / sum_j max(-g_j, 0), or all 0 when no sample
helps the meta loss (the batch then takes no step). The meta-gradient comes from the same
estimators as MW-Net's (``exact`` or ``jvp``). A training method and a baseline; it learns
nothing to transfer, so its runs publish no weighter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from weightzoo.bilevel.estimators import AUTO
from weightzoo.bilevel.metaset import VirtualStepConfig
from weightzoo.losses import per_sample_loss
from weightzoo.methods.base import Batch, StepOutput
from weightzoo.methods.bilevel import BilevelMethod, check_estimator
from weightzoo.methods.registry import register_method
from weightzoo.weighting.reduction import LossTerm

if TYPE_CHECKING:
    from weightzoo.training.engine import Trainer


@dataclass
class L2RWConfig:
    """estimator / reuse_forward: as for ``mwnet``; meta: the meta set and virtual step."""

    estimator: str = AUTO
    reuse_forward: bool = True
    meta: VirtualStepConfig = field(default_factory=VirtualStepConfig)

    def __post_init__(self) -> None:
        check_estimator(self.estimator)


def l2rw_weights(meta_gradient: torch.Tensor) -> torch.Tensor:
    """w = max(-g, 0) / sum (zero-sum guard: all zeros): (B,) -> (B,), >= 0, sums to 1 or 0."""
    clipped = torch.clamp(-meta_gradient, min=0.0)
    total = clipped.sum()
    return torch.where(total > 0, clipped / torch.where(total > 0, total, torch.ones_like(total)),
                       torch.zeros_like(clipped))


@register_method("l2rw", L2RWConfig, description="Learning to Reweight Examples (Ren et al. 2018)")
class L2RW(BilevelMethod):
    def __init__(self, config: L2RWConfig) -> None:
        super().__init__(config)

    def step(self, trainer: Trainer, batch: Batch) -> StepOutput:
        if batch.warmup:
            losses = per_sample_loss("ce", trainer.model(batch.x).float(), batch.y)
            return StepOutput({"ce": LossTerm(losses)})
        eps = torch.zeros(len(batch.y), device=batch.x.device, requires_grad=True)

        def objective(logits: torch.Tensor) -> dict[str, LossTerm]:
            return {"ce": LossTerm(per_sample_loss("ce", logits, batch.y), eps, "mean")}

        result = self.meta_gradient(trainer, batch.x, batch.lr, objective, [eps], shared=False)
        if not math.isfinite(result.meta_loss):
            raise FloatingPointError(f"meta loss is {result.meta_loss} at epoch {batch.epoch + 1}, "
                                     f"iteration {batch.iteration} (diverged? lower the learning rate)")
        helpful = torch.clamp(-result.grads[0].detach(), min=0.0)
        losses = per_sample_loss("ce", self.logits(trainer, batch.x, result.forward).float(), batch.y)
        # "sum" normalises by the (global, under torchrun) sum, with the zero-sum guard
        return StepOutput({"ce": LossTerm(losses, helpful, "sum")}, l2rw_weights(result.grads[0].detach()),
                          logs={"helpful_fraction": (helpful > 0).float().mean()})
