"""``cmwnet-sl``: CMW-Net-SL meta-training (CMW-Net §3.6, Algorithm 3 of its supplement and the
reference code): CMW-Net whose training loss is the soft-label loss of
:mod:`weightzoo.weighting.soft_labels` -- the weighter decides per sample between the given
label (v) and the EMA teacher's soft label (1 - v) on mixup inputs -- with the meta loss on
(dominant) mixup meta batches. The artifact records ``base_loss = "sl"``, so that frozen
use (``frozen`` method, ``WeightedLoss.soft_label_loss``) applies it with the same loss.

Deviation from the reference code, documented: the teacher predicts in eval mode (its
BatchNorm statistics are the EMA of the student's); the reference runs it in train mode.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from weightzoo.bilevel.metaset import ModelEMA
from weightzoo.methods.base import Batch, StepOutput
from weightzoo.methods.meta_weighting import MetaConfig, MetaWeighting, MetaWeightingConfig
from weightzoo.methods.registry import register_method
from weightzoo.weighting.soft_labels import SoftLabelBatch

if TYPE_CHECKING:
    from weightzoo.training.engine import Trainer


def sl_meta_defaults() -> MetaConfig:
    """The reference code's meta set: mixup Beta(1, 1) on meta batches."""
    return MetaConfig(mixup_alpha=1.0)


@dataclass
class SoftLabelConfig(MetaWeightingConfig):
    """``cmwnet``'s keys plus mixup_alpha (training-batch mixup, lambda ~ Beta(alpha, alpha),
    max(lambda, 1 - lambda); 0 turns it off) and teacher_decay (EMA of the teacher, 0.997 in
    the paper). ``normalization`` is ``mean``: the loss is a per-sample convex combination."""

    normalization: str = "mean"
    mixup_alpha: float = 1.0
    teacher_decay: float = 0.997
    meta: MetaConfig = field(default_factory=sl_meta_defaults)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.base_loss != "ce":
            raise ValueError("method.base_loss does not apply to cmwnet-sl: its loss is the soft-label loss")
        if self.normalization != "mean":
            raise ValueError("method.normalization must be 'mean' for the soft-label loss")
        if self.mixup_alpha < 0 or not 0.0 <= self.teacher_decay <= 1.0:
            raise ValueError("method.mixup_alpha must be >= 0 and method.teacher_decay in [0, 1]")


@register_method("cmwnet-sl", SoftLabelConfig, publishes=True,
                 description="CMW-Net-SL meta-training: weighted label vs EMA soft label (Shu et al. 2023)")
class SoftLabelMetaWeighting(MetaWeighting):

    def __init__(self, config: SoftLabelConfig, **kwargs: Any) -> None:
        super().__init__(config, kind="cmwnet", **kwargs)
        self.sl_config = config
        self.teacher: ModelEMA | None = None

    @property
    def identity(self) -> str:
        return "meta:cmwnet-sl"

    @property
    def base_loss(self) -> str:
        return "sl"

    def setup(self, trainer: Trainer) -> None:
        super().setup(trainer)
        self.teacher = ModelEMA(trainer.module, self.sl_config.teacher_decay)

    def step(self, trainer: Trainer, batch: Batch) -> StepOutput:
        assert self.weighting is not None and self.teacher is not None, "setup() was not called"
        if batch.warmup:
            return super().step(trainer, batch)
        sl = SoftLabelBatch.draw(self.teacher.module, batch.x, self.sl_config.mixup_alpha)
        learnable = partial(self.weighting.weights, grad=True, checked=True)
        kept = None
        if self.meta_iteration(batch):
            kept = self.learn(trainer, sl.x, batch.lr, lambda logits: sl.terms(logits, batch.y, learnable),
                              dominant_mixup=True, keep_gradient=self.config.lagged)
            if self.config.lagged:
                return self.lagged_step(trainer, kept, "label")
        logits = self.logits(trainer, sl.x, kept).float()
        terms = sl.terms(logits, batch.y, partial(self.weighting.weights, checked=True))
        return StepOutput(terms, terms["label"].weights)

    def after_step(self, trainer: Trainer, batch: Batch, output: StepOutput) -> None:
        super().after_step(trainer, batch, output)
        if self.teacher is not None:
            self.teacher.update(trainer.module)

    def state_dict(self) -> dict[str, Any]:
        assert self.teacher is not None
        return {**super().state_dict(), "teacher": self.teacher.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        assert self.teacher is not None
        super().load_state_dict(state)
        self.teacher.load_state_dict(state["teacher"])
