"""Plain-loss methods: the mean of CE or of a robust-loss baseline, one registered name each.

- ``ce``; ``focal`` (gamma); ``gce`` (q); ``sce`` (alpha, beta, log_zero);
  ``class-balanced`` (beta; weights from the whole training set's class counts);
  ``poly-soft`` (lam, d); ``bi-tempered`` (t1, t2).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch

from weightzoo.losses import class_balanced_weights, class_weighted_cross_entropy, per_sample_loss
from weightzoo.methods.base import Batch, Method, StepOutput
from weightzoo.methods.registry import register_method
from weightzoo.weighting.reduction import LossTerm

if TYPE_CHECKING:
    from weightzoo.training.engine import Schedule, Trainer


@dataclass
class CEConfig:
    """Cross entropy has no hyper-parameters."""


@dataclass
class FocalConfig:
    gamma: float = 2.0


@dataclass
class GCEConfig:
    q: float = 0.7


@dataclass
class SCEConfig:
    alpha: float = 0.1
    beta: float = 1.0
    log_zero: float = -4.0


@dataclass
class ClassBalancedConfig:
    beta: float = 0.9999


@dataclass
class PolySoftConfig:
    lam: float = 5.0
    d: float = 3.0


@dataclass
class BiTemperedConfig:
    t1: float = 0.8
    t2: float = 1.2


class PlainLoss(Method):
    """Mean of the per-sample loss ``loss`` with hyper-parameters ``params`` (re-balanced by
    class from the first milestone under ``schedule.rebalance = "deferred"``: DRW)."""

    rebalances = True

    def __init__(self, loss: str = "ce", **params: Any) -> None:
        self.loss, self.params = loss, params
        self.name = loss
        self.class_weights: torch.Tensor | None = None

    def check_schedule(self, schedule: Schedule) -> None:
        super().check_schedule(schedule)
        refuse_double_balance(self.loss, schedule)

    def setup(self, trainer: Trainer) -> None:
        if self.loss == "class-balanced":  # (C,) once, on the device, from the whole training set
            weights = class_balanced_weights(trainer.global_class_counts(), **self.params)
            self.class_weights = weights.float().to(trainer.device)

    def step(self, trainer: Trainer, batch: Batch) -> StepOutput:
        logits = trainer.model(batch.x).float()
        if self.class_weights is not None:
            losses = class_weighted_cross_entropy(logits, batch.y, self.class_weights)
        else:
            losses = per_sample_loss(self.loss, logits, batch.y, **self.params)
        return StepOutput({self.loss: LossTerm(trainer.rebalanced(losses, batch))})


# losses that take no deferred re-balancing: one balances the classes itself, the other mixes labels
UNREBALANCED_LOSSES = ("class-balanced", "sl")


def refuse_double_balance(loss: str, schedule: Schedule) -> None:
    """A loss that balances classes itself (or mixes labels) takes no deferred re-balancing."""
    if schedule.rebalance != "none" and loss in UNREBALANCED_LOSSES:
        raise ValueError(f"schedule.rebalance = {schedule.rebalance!r} with the {loss!r} loss: "
                         + ("it balances the classes already" if loss == "class-balanced"
                            else "its mixed-up labels have no one class to weight by"))


def _register(name: str, config_class: type, description: str) -> None:
    register_method(name, config_class, baseline=True, description=description)(
        lambda config: PlainLoss(name, **asdict(config))
    )


_register("ce", CEConfig, "cross entropy")
_register("focal", FocalConfig, "focal loss (Lin et al. 2017)")
_register("gce", GCEConfig, "generalised cross entropy (Zhang & Sabuncu 2018)")
_register("sce", SCEConfig, "symmetric cross entropy (Wang et al. 2019)")
_register("class-balanced", ClassBalancedConfig, "class-balanced CE (Cui et al. 2019)")
_register("poly-soft", PolySoftConfig, "polynomial soft weighting (Zhao et al. 2015)")
_register("bi-tempered", BiTemperedConfig, "bi-tempered logistic loss (Amid et al. 2019)")
