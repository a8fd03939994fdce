"""``BilevelMethod``: what every method that takes meta steps shares -- the meta set, the
meta-gradient estimator, the virtual step's options, the kept look-ahead forward, the
meta-learned module with its Adam optimizer (checkpointed), and the epoch's mean meta loss.
Subclasses build an objective and call :meth:`BilevelMethod.learn` (a meta-learned module)
or :meth:`BilevelMethod.meta_gradient` (any tensors, e.g. L2RW's per-sample eps)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch import nn

from weightzoo.bilevel.estimators import (
    AUTO,
    BilevelProblem,
    KeptForward,
    MetaGradient,
    MetaGradientEstimator,
    apply_meta_gradient,
    build_estimator,
    estimator_names,
    fastest_exact_estimator,
)
from weightzoo.bilevel.lookahead import LookaheadConfig, Objective
from weightzoo.bilevel.metaset import MetaSet, VirtualStepConfig
from weightzoo.losses import per_sample_loss
from weightzoo.methods.base import Method, RunContext, StepOutput

if TYPE_CHECKING:
    from weightzoo.training.engine import Trainer


def check_estimator(name: str) -> None:
    """For config validation: ``auto`` or a registered estimator."""
    if name not in (AUTO, *estimator_names()):
        raise ValueError(f"method.estimator must be one of {(AUTO, *estimator_names())}")


def mean_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The meta loss: mean CE over the meta batch, hard (M,) or soft (M, C) targets."""
    return per_sample_loss("ce", logits, targets).mean()


class BilevelConfig(Protocol):
    """What every bilevel method's config holds: ``estimator`` (a registered name or
    ``auto``), ``reuse_forward`` (the real step may reuse the look-ahead's forward: single
    process, no autocast) and ``meta`` (the meta set and virtual-step options)."""

    estimator: str
    reuse_forward: bool
    meta: VirtualStepConfig


class BilevelMethod(Method):
    """config: the method's config (a :class:`BilevelConfig`; read when needed, so edits
    before ``setup`` count); meta_x / meta_y: a clean meta set (else the pipeline's, at
    :meth:`bind`)."""

    def __init__(self, config: BilevelConfig, meta_x: torch.Tensor | None = None,
                 meta_y: torch.Tensor | None = None) -> None:
        self.config = config
        self.meta_set = MetaSet(config.meta, meta_x, meta_y)
        self.estimator: MetaGradientEstimator | None = None
        self.learner: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._meta_losses: list[float] = []

    @property
    def clean_meta_per_class(self) -> int:
        return self.meta_set.clean_per_class

    @property
    def singleton_meta_per_class(self) -> int:
        meta = self.meta_set.config
        return meta.per_class if meta.source == "singletons" else 0

    def bind(self, run: RunContext) -> None:
        self.meta_set.bind(run.meta_x, run.meta_y)

    def setup(self, trainer: Trainer) -> None:
        if trainer.schedule.batch_size % trainer.world:
            raise ValueError(f"the global batch size {trainer.schedule.batch_size} does not divide by "
                             f"the world size {trainer.world}: meta steps need equal shards")
        name = self.config.estimator
        if name == AUTO:  # data-parallel meta steps need the jvp route
            name = "jvp" if trainer.world > 1 else fastest_exact_estimator(trainer.module)
        self.estimator = build_estimator(name, self.config.meta, seed=trainer.seed)
        self.estimator.prepare(trainer.module)
        self.meta_set.setup(trainer)

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        self.meta_set.rebuild(trainer)
        self._meta_losses = []

    def meta_gradient(
        self, trainer: Trainer, x: torch.Tensor, lr: float, objective: Objective,
        hyper_params: list[torch.Tensor], *, dominant_mixup: bool = False, shared: bool = True,
        meta_batch: tuple[torch.Tensor, torch.Tensor] | None = None, keep_gradient: bool = False,
    ) -> MetaGradient:
        """dL^meta/d hyper_params for the training objective on inputs x (B, ...), on a fresh
        meta batch (this rank's shard of it under torchrun) or on ``meta_batch`` (x (M, ...),
        y (M,)) when the method gives one; keeps the look-ahead's forward when the real step
        may reuse it, and its gradient too with ``keep_gradient`` (a lagged real step).
        ``shared``: the hyper-parameters are the same on every rank (summed gradients), not
        per sample."""
        assert self.estimator is not None, "setup() was not called"
        meta_x, meta_y = meta_batch or self.meta_set.batch(trainer, dominant=dominant_mixup)
        config = self.meta_set.config
        result = self.estimator(BilevelProblem(
            model=trainer.module, x=x, objective=objective, meta_x=meta_x, meta_y=meta_y,
            meta_loss_fn=mean_cross_entropy, hyper_params=hyper_params, lr=lr,
            optimizer=trainer.optimizer,
            lookahead_config=LookaheadConfig(config.include_momentum, config.include_weight_decay),
            keep_forward=self.keeps_forward(trainer), keep_gradient=keep_gradient,
            shared_hyper_params=shared,
        ))
        self._meta_losses.append(result.meta_loss)
        return result

    def keeps_forward(self, trainer: Trainer) -> bool:
        """Whether the real step may reuse the look-ahead's forward (``reuse_forward``, one
        process, no autocast)."""
        return self.config.reuse_forward and trainer.amp_dtype is None and trainer.world == 1

    def start_learning(self, learner: nn.Module, lr: float, weight_decay: float) -> None:
        """Meta-learn ``learner`` with Adam (called from ``setup``)."""
        self.learner = learner
        self.optimizer = torch.optim.Adam(learner.parameters(), lr=lr, weight_decay=weight_decay)

    def join(self, lead: Method) -> None:
        """A method that meta-learns a module trains it on one source only: refused here
        (nothing to share is fine, e.g. L2RW). :class:`MetaWeighting` shares its weighter,
        :class:`AdaptiveRobustLoss` its loss."""
        if self.learner is not None:
            raise ValueError(f"method {self.name!r} cannot meta-learn one module on several sources "
                             "(multi-source training shares a weighter or a learned loss: mwnet, "
                             "cmwnet, cmwnet-sl, arl)")

    def share_learner(self, lead: BilevelMethod) -> None:
        """Meta-learn the lead's learner with the lead's optimizer (one Adam state for every
        source: each source's meta step is one update of the shared module)."""
        self.learner, self.optimizer = lead.learner, lead.optimizer

    def learn(self, trainer: Trainer, x: torch.Tensor, lr: float, objective: Objective,
              **options: Any) -> KeptForward | None:
        """One meta step of the learner on the objective; returns the kept forward.
        A non-finite meta loss raises and leaves the learner unchanged."""
        assert self.learner is not None and self.optimizer is not None, "start_learning() first"
        params = [p for p in self.learner.parameters() if p.requires_grad]
        result = self.meta_gradient(trainer, x, lr, objective, params, **options)
        apply_meta_gradient(result, params, self.optimizer)
        return result.forward

    def lagged_step(self, trainer: Trainer, kept: KeptForward | None, weighted: str) -> StepOutput:
        """The real step along the look-ahead's own gradient (weights one meta update behind):
        the kept forward's buffers restored, its terms reported and the weights of its term
        ``weighted``. Raises when the meta step did not keep that gradient."""
        if kept is None or kept.grads is None:
            name = self.estimator.name if self.estimator is not None else "?"
            raise ValueError(f"the {name!r} estimator did not keep the look-ahead's gradient, which a "
                             "lagged real step follows")
        kept.restore_buffers(trainer.module)
        return StepOutput(kept.terms, kept.terms[weighted].weights, grads=kept.grads)

    @staticmethod
    def logits(trainer: Trainer, x: torch.Tensor, kept: KeptForward | None) -> torch.Tensor:
        """The real step's logits: the kept look-ahead forward (its buffers restored), or a
        fresh forward."""
        if kept is None:
            return trainer.model(x)
        kept.restore_buffers(trainer.module)
        return kept.logits

    def after_step(self, trainer: Trainer, batch: Any, output: Any) -> None:
        self.meta_set.after_step(trainer)

    def epoch_metrics(self) -> dict[str, float]:
        metrics = self.estimator.take_metrics() if self.estimator is not None else {}
        if self._meta_losses:
            metrics["meta_loss"] = float(np.mean(self._meta_losses))
        return metrics

    def provenance(self) -> dict[str, Any]:
        return {"estimator": self.estimator.name if self.estimator is not None else None}

    def state_dict(self) -> dict[str, Any]:
        state = self.meta_set.state_dict()
        if self.learner is not None and self.optimizer is not None:
            state.update(learner=self.learner.state_dict(), optimizer=self.optimizer.state_dict())
        if self.estimator is not None and (estimator := self.estimator.state_dict()):
            state["estimator"] = estimator
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.meta_set.load_state_dict(state)
        if self.learner is not None and self.optimizer is not None:
            self.learner.load_state_dict(state["learner"])
            self.optimizer.load_state_dict(state["optimizer"])
        if self.estimator is not None and "estimator" in state:
            self.estimator.load_state_dict(state["estimator"])
