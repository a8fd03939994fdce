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

import torch

from weightzoo.bilevel.estimators import (
    AUTO,
    BilevelProblem,
    MetaGradient,
    MetaGradientEstimator,
    apply_meta_gradient,
    build_estimator,
)
from weightzoo.bilevel.lookahead import LookaheadConfig, Objective
from weightzoo.bilevel.metaset import VirtualStepConfig
from weightzoo.methods.base import Batch, Method, RunContext, StepOutput, TrainedArtifact
from weightzoo.methods.bilevel import BilevelMethod, check_estimator, mean_cross_entropy
from weightzoo.methods.registry import register_method
from weightzoo.weighting.nets import (
    INPUT_NORMS,
    NORMALIZATIONS,
    WEIGHTED_LOSSES,
    CMWNet,
    WeighterConfig,
    build_weighter,
)
from weightzoo.weighting.reduction import LossTerm
from weightzoo.weighting.sample_weighting import SampleWeighting

if TYPE_CHECKING:
    from torch import nn

    from weightzoo.training.engine import Schedule, Trainer


def weighting_objective(weighting: SampleWeighting, y: torch.Tensor, base_loss: str = "ce") -> Objective:
    """The training objective of MW-Net / CMW-Net: the weighted ``base_loss`` term ``ce`` of
    labels y (B,) (the weighter reads each sample's CE), differentiable w.r.t. the weighter."""

    def objective(logits: torch.Tensor) -> dict[str, LossTerm]:
        return {"ce": weighting.term(base_loss, logits, y, grad=True)}

    return objective


def weighting_meta_gradient(
    model: nn.Module, weighting: SampleWeighting, x: torch.Tensor, y: torch.Tensor,
    meta_x: torch.Tensor, meta_y: torch.Tensor, *, lr: float | None,
    optimizer: torch.optim.Optimizer | None = None,
    lookahead_config: LookaheadConfig | None = None,
    estimator: MetaGradientEstimator | None = None, keep_forward: bool = False,
    keep_gradient: bool = False,
) -> MetaGradient:
    """dL^meta/dTheta for the weighter of ``weighting`` (Algorithm 1, steps 1-3), its weights
    multiplying the weighter's own base loss (CE for a soft-label weighter).

    x (B, ...), y (B,) a training batch; meta_x (M, ...), meta_y (M,) or (M, C) soft;
    keep_forward / keep_gradient: as :class:`~weightzoo.bilevel.estimators.BilevelProblem`'s.
    Nothing is modified.
    """
    params = [p for p in weighting.weighter.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the weighter has no trainable parameters to meta-learn")
    objective = weighting_objective(weighting, y, weighting.weighter.config.weighted_loss)
    return (estimator or build_estimator("exact"))(BilevelProblem(
        model=model, x=x, objective=objective, meta_x=meta_x, meta_y=meta_y,
        meta_loss_fn=mean_cross_entropy, hyper_params=params, lr=lr, optimizer=optimizer,
        lookahead_config=lookahead_config or LookaheadConfig(), keep_forward=keep_forward,
        keep_gradient=keep_gradient,
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
class MetaConfig(VirtualStepConfig):
    """Meta-training options of a weighter (CMW-Net §3.4, §4.2): the meta set and virtual
    step (:class:`~weightzoo.bilevel.metaset.VirtualStepConfig`), plus Adam on the weighter
    (``meta_lr``: ~1e-3 for noise, 1e-5..1e-4 for imbalance; ``meta_weight_decay``) and a
    meta step every ``meta_interval`` iterations."""

    meta_lr: float = 1e-3
    meta_weight_decay: float = 1e-4
    meta_interval: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.meta_interval < 1:
            raise ValueError("meta.meta_interval must be >= 1")
        if min(self.meta_lr, self.meta_weight_decay) < 0:
            raise ValueError("meta.meta_lr and meta.meta_weight_decay must be >= 0")


REAL_STEPS: tuple[str, ...] = ("updated", "lagged")


@dataclass
class MetaWeightingConfig:
    """The ``[method]`` keys of ``cmwnet`` (and ``mwnet``).

    num_families: heads K (task families); hidden: width of the shared layer;
    normalization / input_norm: as in :class:`~weightzoo.weighting.nets.WeighterConfig`;
    estimator: the meta-gradient estimator: ``auto`` (the faster exact route for the model:
        ``jvp`` with convolutions or batch norm, else ``exact``), ``exact`` (second-order
        backward), ``jvp`` (the same gradient with one forward-mode pass instead), or the
        approximations ``last-layer`` and ``famus`` (options in ``[meta.famus]``);
    reuse_forward: the real step reuses the look-ahead's forward at theta instead of a
        fresh one (single process, no autocast); identical results unless the model has
        dropout (the masks are then shared with the look-ahead);
    real_step: ``updated`` (the papers' Algorithm 1: the real step weights the batch with
        the weighter just updated, one more backward) or ``lagged`` (an approximation: the
        real step follows the look-ahead's own gradient, i.e. weights from the weighter
        before this meta update; saves the real backward; needs ``reuse_forward``, one
        process, no autocast, and an estimator that steps every layer, not ``last-layer``);
    base_loss: the per-sample loss the weights multiply: ``ce`` (the papers), a robust
        loss, ``gce`` / ``sce`` (defaults of ``weightzoo.losses``), or ``class-balanced`` CE
        (class weights from the counts of the data trained on); the weighter reads each
        sample's CE either way, and the meta loss stays CE on the meta set. Recorded in the
        artifact, so that frozen use weights the same loss;
    meta: the ``[meta]`` table.
    """

    num_families: int = 3
    hidden: int = 100
    normalization: str = "sum"
    input_norm: str = "log_classes"
    estimator: str = AUTO
    reuse_forward: bool = True
    real_step: str = "updated"
    base_loss: str = "ce"
    meta: MetaConfig = field(default_factory=MetaConfig)

    def __post_init__(self) -> None:
        if self.num_families < 1 or self.hidden < 1:
            raise ValueError("method.num_families and method.hidden must be >= 1")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"method.normalization must be one of {NORMALIZATIONS}")
        if self.input_norm not in INPUT_NORMS:
            raise ValueError(f"method.input_norm must be one of {INPUT_NORMS}")
        check_estimator(self.estimator)
        if self.real_step not in REAL_STEPS:
            raise ValueError(f"method.real_step must be one of {REAL_STEPS}, got {self.real_step!r}")
        if self.lagged and (self.estimator == "last-layer" or not self.reuse_forward):
            raise ValueError("method.real_step 'lagged' reuses the look-ahead's forward and full gradient: "
                             "it needs reuse_forward = true and an estimator other than 'last-layer'")
        if self.base_loss not in WEIGHTED_LOSSES:
            raise ValueError(f"method.base_loss must be one of {WEIGHTED_LOSSES}, got {self.base_loss!r}")

    @property
    def lagged(self) -> bool:
        return self.real_step == "lagged"

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


class MetaWeighting(BilevelMethod):
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
        super().__init__(config, meta_x, meta_y)
        self.config: MetaWeightingConfig = config
        self.kind, self.weighter, self.family_seed = kind, weighter, family_seed
        self.weighting: SampleWeighting | None = None

    @property
    def meta(self) -> MetaConfig:
        return self.config.meta

    @property
    def base_loss(self) -> str:
        """The per-sample loss the weights multiply (recorded in the artifact)."""
        return self.config.base_loss

    @property
    def identity(self) -> str:
        return f"meta:{self.weighter.config.kind if self.weighter is not None else self.kind}"

    def bind(self, run: RunContext) -> None:
        """Build the weighter (seeded) for data with ``run.num_classes`` classes."""
        super().bind(run)
        self.family_seed = run.seed
        if self.weighter is None:
            cfg = self.config
            torch.manual_seed(run.seed)
            self.weighter = build_weighter(WeighterConfig(
                kind=self.kind, hidden=cfg.hidden, num_families=cfg.num_families,  # type: ignore[arg-type]
                input_norm=cfg.input_norm, normalization=cfg.normalization,  # type: ignore[arg-type]
                base_loss=self.base_loss, source_num_classes=run.num_classes,
            ))

    def setup(self, trainer: Trainer) -> None:
        if self.weighter is None:
            self.bind(RunContext(trainer.data.num_classes, seed=trainer.seed))
        assert self.weighter is not None
        if self.config.lagged and not self.keeps_forward(trainer):
            raise ValueError("a lagged real step reuses the look-ahead's forward and gradient: it needs "
                             "reuse_forward, one process and no autocast")
        super().setup(trainer)
        self.weighter.to(trainer.device).train().requires_grad_(True)
        self.start_learning(self.weighter, self.meta.meta_lr, self.meta.meta_weight_decay)
        self.weighting = SampleWeighting.fit(
            self.weighter, trainer.global_class_counts(), seed=self.family_seed
        ).to(trainer.device)

    def join(self, lead: Method) -> None:
        """Weight this source's samples with the lead's weighter (meta-learned by every source),
        by this source's own task families."""
        assert isinstance(lead, MetaWeighting) and self.weighting is not None and lead.weighter is not None
        self.share_learner(lead)
        self.weighter = self.weighting.weighter = lead.weighter  # families and device kept

    def meta_iteration(self, batch: Batch) -> bool:
        return not batch.warmup and batch.iteration % self.meta.meta_interval == 0

    def step(self, trainer: Trainer, batch: Batch) -> StepOutput:
        assert self.weighting is not None, "setup() was not called"
        kept = None
        if self.meta_iteration(batch):
            kept = self.learn(trainer, batch.x, batch.lr,
                              weighting_objective(self.weighting, batch.y, self.config.base_loss),
                              keep_gradient=self.config.lagged)
            if self.config.lagged:
                return self.lagged_step(trainer, kept, "ce")
        logits = self.logits(trainer, batch.x, kept).float()
        term = self.weighting.term(self.config.base_loss, logits, batch.y, weighted=not batch.warmup)
        return StepOutput({"ce": term}, term.weights)

    def trained_artifact(self) -> TrainedArtifact | None:
        if self.weighting is None:
            return None
        return TrainedArtifact(self.weighting.weighter, self.weighting.families)


register_method("mwnet", MWNetConfig, publishes=True,
                description="MW-Net meta-training (Shu et al. 2019)")(
    lambda config: MetaWeighting(config, kind="mwnet")
)
register_method("cmwnet", MetaWeightingConfig, publishes=True,
                description="CMW-Net meta-training (Shu et al. 2023)")(
    lambda config: MetaWeighting(config, kind="cmwnet")
)
