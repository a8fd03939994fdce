"""``mwnet`` / ``cmwnet``: meta-learn a weighter while training the model (MW-Net / CMW-Net
Algorithm 1): a look-ahead meta step on the weighter every ``meta_interval`` iterations,
then the real step with weights from the updated weighter.

The meta set is a clean held-out set (``meta.source = "clean"``) or is rebuilt each epoch
from the training set (``"train"``: the ``per_class`` lowest-loss samples per noisy class,
scored by an EMA model; CMW-Net §4.2), optionally with mixup on the meta loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

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
from weightzoo.bilevel.lookahead import LookaheadConfig
from weightzoo.bilevel.metaset import ModelEMA, lowest_loss_indices, mixup
from weightzoo.losses import per_sample_loss
from weightzoo.methods.base import Batch, Method, RunContext, StepOutput
from weightzoo.methods.registry import register_method
from weightzoo.weighting.nets import INPUT_NORMS, NORMALIZATIONS, CMWNet, WeighterConfig, build_weighter
from weightzoo.weighting.reduction import LossTerm
from weightzoo.weighting.sample_weighting import SampleWeighting

if TYPE_CHECKING:
    from torch import nn

    from weightzoo.training.engine import Schedule, Trainer


def mean_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The meta loss: mean CE over the meta batch, hard (M,) or soft (M, C) targets."""
    return per_sample_loss("ce", logits, targets).mean()


def weighting_meta_gradient(
    model: nn.Module, weighting: SampleWeighting, x: torch.Tensor, y: torch.Tensor,
    meta_x: torch.Tensor, meta_y: torch.Tensor, *, lr: float | None,
    optimizer: torch.optim.Optimizer | None = None,
    lookahead_config: LookaheadConfig | None = None,
    estimator: MetaGradientEstimator | None = None, keep_forward: bool = False,
) -> MetaGradient:
    """dL^meta/dTheta for the weighter of ``weighting`` (Algorithm 1, steps 1-3).

    x (B, ...), y (B,) a training batch; meta_x (M, ...), meta_y (M,) or (M, C) soft.
    The training objective is the weighted CE term ``ce``; nothing is modified.
    """

    def objective(logits: torch.Tensor) -> dict[str, LossTerm]:
        losses = per_sample_loss("ce", logits, y)
        weights = weighting.weights(losses, y, grad=True, checked=True)
        return {"ce": LossTerm(losses, weights, weighting.normalization)}

    params = [p for p in weighting.weighter.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the weighter has no trainable parameters to meta-learn")
    return (estimator or build_estimator("exact"))(BilevelProblem(
        model=model, x=x, objective=objective, meta_x=meta_x, meta_y=meta_y,
        meta_loss_fn=mean_cross_entropy, hyper_params=params, lr=lr, optimizer=optimizer,
        lookahead_config=lookahead_config or LookaheadConfig(), keep_forward=keep_forward,
    ))


def weighting_meta_step(
    model: nn.Module, weighting: SampleWeighting, weighter_optimizer: torch.optim.Optimizer,
    x: torch.Tensor, y: torch.Tensor, meta_x: torch.Tensor, meta_y: torch.Tensor, **kwargs: Any,
) -> MetaGradient:
    """One meta update of the weighter (arguments as :func:`weighting_meta_gradient`);
    returns its meta-gradient (``.meta_loss``, ``.forward`` when kept). A non-finite meta
    loss raises and leaves the weighter unchanged."""
    result = weighting_meta_gradient(model, weighting, x, y, meta_x, meta_y, **kwargs)
    params = [p for p in weighting.weighter.parameters() if p.requires_grad]
    apply_meta_gradient(result, params, weighter_optimizer)
    return result


@dataclass
class MetaConfig:
    """Meta-training options (CMW-Net §3.4, §4.2).

    meta_lr / meta_weight_decay: Adam on the weighter (~1e-3 for noise, 1e-5..1e-4 imbalance).
    meta_interval: a meta step every k iterations.
    meta_batch_size: meta samples per meta step (drawn from the meta set).
    include_momentum / include_weight_decay: reproduce them in the virtual step.
    source: ``clean`` (a held-out clean balanced set of ``per_class`` samples per class) or
        ``train`` (rebuilt each epoch: the ``per_class`` lowest-loss samples per noisy class
        scored by an EMA model with decay ``ema_decay``).
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

    def __post_init__(self) -> None:
        if self.source not in ("clean", "train"):
            raise ValueError(f"meta.source must be 'clean' or 'train', got {self.source!r}")
        for key in ("meta_interval", "meta_batch_size", "per_class"):
            if getattr(self, key) < 1:
                raise ValueError(f"meta.{key} must be >= 1")
        if min(self.meta_lr, self.meta_weight_decay, self.mixup_alpha) < 0:
            raise ValueError("meta.meta_lr, meta.meta_weight_decay and meta.mixup_alpha must be >= 0")
        if not 0.0 <= self.ema_decay <= 1.0:
            raise ValueError("meta.ema_decay must be in [0, 1]")


@dataclass
class MetaWeightingConfig:
    """The ``[method]`` keys of ``cmwnet`` (and ``mwnet``).

    num_families: heads K (task families); hidden: width of the shared layer;
    normalization / input_norm: as in :class:`~weightzoo.weighting.nets.WeighterConfig`;
    estimator: the meta-gradient estimator: ``auto`` (the faster exact route for the model:
        ``jvp`` with convolutions or batch norm, else ``exact``), ``exact`` (second-order
        backward) or ``jvp`` (the same gradient with one forward-mode JVP instead);
    reuse_forward: the real step reuses the look-ahead's forward at theta instead of a
        fresh one (single process, no autocast); identical results unless the model has
        dropout (the masks are then shared with the look-ahead);
    meta: the ``[meta]`` table.
    """

    num_families: int = 3
    hidden: int = 100
    normalization: str = "sum"
    input_norm: str = "log_classes"
    estimator: str = AUTO
    reuse_forward: bool = True
    meta: MetaConfig = field(default_factory=MetaConfig)

    def __post_init__(self) -> None:
        if self.num_families < 1 or self.hidden < 1:
            raise ValueError("method.num_families and method.hidden must be >= 1")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"method.normalization must be one of {NORMALIZATIONS}")
        if self.input_norm not in INPUT_NORMS:
            raise ValueError(f"method.input_norm must be one of {INPUT_NORMS}")
        if self.estimator not in (AUTO, *estimator_names()):
            raise ValueError(f"method.estimator must be one of {(AUTO, *estimator_names())}")

    def validate(self, schedule: Schedule) -> None:
        if schedule.warmup_epochs >= schedule.epochs:
            raise ValueError(
                f"schedule.warmup_epochs ({schedule.warmup_epochs}) must be less than "
                f"schedule.epochs ({schedule.epochs}), or the weighter is never meta-trained"
            )


@dataclass
class MWNetConfig(MetaWeightingConfig):
    """MW-Net is CMW-Net with one family: ``num_families`` is always 1 (a value in a recipe
    written before 0.2, where the key was shared with CMW-Net, is ignored)."""

    num_families: int = 1

    def __post_init__(self) -> None:
        self.num_families = 1
        super().__post_init__()


class MetaWeighting(Method):
    """Meta-learn a weighter while training the model.

    kind: ``mwnet`` or ``cmwnet`` (the weighter built from ``config`` at :meth:`bind`);
    weighter: an existing weighter to meta-train instead (its own config wins);
    meta_x (M, ...), meta_y (M,): the clean meta set when ``config.meta.source == 'clean'``
    (given here or by the pipeline at :meth:`bind`).
    """

    def __init__(
        self, config: MetaWeightingConfig, *, kind: str = "cmwnet", weighter: CMWNet | None = None,
        meta_x: torch.Tensor | None = None, meta_y: torch.Tensor | None = None,
        family_seed: int = 0,
    ) -> None:
        self.config, self.kind, self.weighter = config, kind, weighter
        self.meta_x, self.meta_y, self.family_seed = meta_x, meta_y, family_seed
        self.estimator: MetaGradientEstimator | None = None
        self.weighting: SampleWeighting | None = None
        self.ema: ModelEMA | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._meta_losses: list[float] = []

    @property
    def meta(self) -> MetaConfig:
        return self.config.meta

    @property
    def identity(self) -> str:
        return f"meta:{self.weighter.config.kind if self.weighter is not None else self.kind}"

    @property
    def clean_meta_per_class(self) -> int:
        return self.meta.per_class if self.meta.source == "clean" else 0

    def bind(self, run: RunContext) -> None:
        """Build the weighter (seeded) for data with ``run.num_classes`` classes."""
        if run.meta_x is not None:
            self.meta_x, self.meta_y = run.meta_x, run.meta_y
        self.family_seed = run.seed
        if self.weighter is None:
            cfg = self.config
            torch.manual_seed(run.seed)
            self.weighter = build_weighter(WeighterConfig(
                kind=self.kind, hidden=cfg.hidden, num_families=cfg.num_families,  # type: ignore[arg-type]
                input_norm=cfg.input_norm, normalization=cfg.normalization,  # type: ignore[arg-type]
                base_loss="ce", source_num_classes=run.num_classes,
            ))

    def setup(self, trainer: Trainer) -> None:
        if trainer.world > 1:
            raise ValueError("meta-training runs in a single process; apply weighters with torchrun")
        if self.weighter is None:
            self.bind(RunContext(trainer.data.num_classes, seed=trainer.seed))
        assert self.weighter is not None
        if self.meta.source == "clean" and (self.meta_y is None or len(self.meta_y) == 0):
            raise ValueError("a clean meta set (meta_x, meta_y) is required for meta.source = 'clean'")
        name = self.config.estimator
        self.estimator = build_estimator(fastest_exact_estimator(trainer.module) if name == AUTO else name)
        self.weighter.to(trainer.device).train().requires_grad_(True)
        self.optimizer = torch.optim.Adam(
            self.weighter.parameters(), lr=self.meta.meta_lr, weight_decay=self.meta.meta_weight_decay,
        )
        self.weighting = SampleWeighting.fit(
            self.weighter, trainer.global_class_counts(), seed=self.family_seed
        ).to(trainer.device)
        if self.meta.source == "train":
            self.ema = ModelEMA(trainer.module, self.meta.ema_decay)

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        if self.ema is not None:
            index = lowest_loss_indices(self.ema.module, trainer.data.x, trainer.data.y, self.meta.per_class)
            self.meta_x, self.meta_y = trainer.data.x[index], trainer.data.y[index]
        self._meta_losses = []

    def _meta_batch(self, trainer: Trainer) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.meta_x is not None and self.meta_y is not None
        size = min(self.meta.meta_batch_size, len(self.meta_y))
        pick = torch.randperm(len(self.meta_y))[:size]
        x, y = self.meta_x[pick].to(trainer.device), self.meta_y[pick].to(trainer.device)
        if self.meta.mixup_alpha > 0:
            return mixup(x, F.one_hot(y, trainer.data.num_classes).float(), self.meta.mixup_alpha)
        return x, y

    def _meta_update(self, trainer: Trainer, batch: Batch) -> KeptForward | None:
        assert self.weighting is not None and self.optimizer is not None
        meta_x, meta_y = self._meta_batch(trainer)
        keep = self.config.reuse_forward and trainer.amp_dtype is None and trainer.world == 1
        result = weighting_meta_step(
            trainer.module, self.weighting, self.optimizer, batch.x, batch.y, meta_x, meta_y,
            lr=batch.lr, optimizer=trainer.optimizer, estimator=self.estimator, keep_forward=keep,
            lookahead_config=LookaheadConfig(self.meta.include_momentum, self.meta.include_weight_decay),
        )
        self._meta_losses.append(result.meta_loss)
        return result.forward

    def step(self, trainer: Trainer, batch: Batch) -> StepOutput:
        assert self.weighting is not None, "setup() was not called"
        kept = None
        if not batch.warmup and batch.iteration % self.meta.meta_interval == 0:
            kept = self._meta_update(trainer, batch)
        if kept is not None:
            kept.restore_buffers(trainer.module)
            logits = kept.logits
        else:
            logits = trainer.model(batch.x)
        losses = per_sample_loss("ce", logits.float(), batch.y)
        if batch.warmup:
            return StepOutput({"ce": LossTerm(losses)})
        weights = self.weighting.weights(losses, batch.y, checked=True)
        return StepOutput({"ce": LossTerm(losses, weights, self.weighting.normalization)}, weights)

    def after_step(self, trainer: Trainer, batch: Batch, output: StepOutput) -> None:
        if self.ema is not None:
            self.ema.update(trainer.module)

    def epoch_metrics(self) -> dict[str, float]:
        if not self._meta_losses:
            return {}
        return {"meta_loss": float(np.mean(self._meta_losses))}

    def trained_weighting(self) -> SampleWeighting | None:
        return self.weighting

    def provenance(self) -> dict[str, Any]:
        return {"estimator": self.estimator.name if self.estimator is not None else None}

    def state_dict(self) -> dict[str, Any]:
        assert self.optimizer is not None and self.weighter is not None
        state: dict[str, Any] = {
            "weighter": self.weighter.state_dict(), "optimizer": self.optimizer.state_dict(),
        }
        if self.ema is not None:
            state["ema"] = self.ema.module.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        assert self.optimizer is not None and self.weighter is not None
        self.weighter.load_state_dict(state["weighter"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None and "ema" in state:
            self.ema.module.load_state_dict(state["ema"])


register_method("mwnet", MWNetConfig, publishes=True,
                description="MW-Net meta-training (Shu et al. 2019)")(
    lambda config: MetaWeighting(config, kind="mwnet")
)
register_method("cmwnet", MetaWeightingConfig, publishes=True,
                description="CMW-Net meta-training (Shu et al. 2023)")(
    lambda config: MetaWeighting(config, kind="cmwnet")
)
