"""``arl``: adaptive robust losses (the talk in shared/papers, Algorithm 1; Shu et al., arXiv
2002.06482): meta-learn the hyper-parameters of a robust loss -- GCE q, SCE alpha / beta,
polynomial soft weighting lam / d, bi-tempered t1 / t2 -- with the same one-step look-ahead
as MW-Net, instead of a weighting function:

    Lambda <- Lambda - beta grad_Lambda L^meta(theta'(Lambda)),  theta' = theta - lr grad L_R(theta; Lambda)
    theta  <- theta - lr grad L_R(theta; Lambda)

Hyper-parameters stay in their ranges by construction (see
:mod:`weightzoo.weighting.learned_loss`). The learned loss is the run's artifact (kind
``robust-loss``), applied frozen with ``LearnedRobustLoss.from_pretrained`` or ``weightzoo
apply``. Both exact estimators work for the four losses (tested equal).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from weightzoo.bilevel.estimators import AUTO
from weightzoo.losses import per_sample_loss
from weightzoo.methods.base import Batch, Method, RunContext, StepOutput, TrainedArtifact
from weightzoo.methods.bilevel import BilevelMethod, check_estimator
from weightzoo.methods.meta_weighting import MetaConfig
from weightzoo.methods.registry import register_method
from weightzoo.weighting.learned_loss import HYPERPARAMETERS, LearnedRobustLoss, RobustLossConfig
from weightzoo.weighting.reduction import LossTerm

if TYPE_CHECKING:
    from weightzoo.training.engine import Schedule, Trainer


def arl_meta_defaults() -> MetaConfig:
    """Hyper-parameters move slowly at a weighter's 1e-3: the talk's runs use 1e-2."""
    return MetaConfig(meta_lr=1e-2, meta_weight_decay=0.0)


@dataclass
class ARLConfig:
    """loss: ``gce``, ``sce``, ``poly-soft`` or ``bi-tempered``; start: initial
    hyper-parameters (default: the plain loss's defaults); estimator / reuse_forward: as for
    ``mwnet``; meta: the ``[meta]`` table (``meta_lr`` is Adam's on the hyper-parameters)."""

    loss: str = "gce"
    start: dict[str, float] = field(default_factory=dict)
    estimator: str = AUTO
    reuse_forward: bool = True
    meta: MetaConfig = field(default_factory=arl_meta_defaults)

    def __post_init__(self) -> None:
        if self.loss not in HYPERPARAMETERS:
            raise ValueError(f"method.loss must be one of {tuple(HYPERPARAMETERS)}")
        LearnedRobustLoss(RobustLossConfig(loss=self.loss), **self.start)  # checks names and ranges
        check_estimator(self.estimator)

    def validate(self, schedule: Schedule) -> None:
        if schedule.warmup_epochs >= schedule.epochs:
            raise ValueError("schedule.warmup_epochs must be less than schedule.epochs, or the loss "
                             "is never meta-learned")


@register_method("arl", ARLConfig, publishes=True,
                 description="adaptive robust loss: meta-learned GCE / SCE / poly-soft / bi-tempered")
class AdaptiveRobustLoss(BilevelMethod):
    def __init__(self, config: ARLConfig) -> None:
        super().__init__(config)
        self.config: ARLConfig = config
        self.loss: LearnedRobustLoss | None = None

    @property
    def identity(self) -> str:
        return f"arl:{self.config.loss}"

    def bind(self, run: RunContext) -> None:
        super().bind(run)
        self.loss = LearnedRobustLoss(RobustLossConfig(loss=self.config.loss,
                                                       source_num_classes=run.num_classes),
                                      **self.config.start)

    def setup(self, trainer: Trainer) -> None:
        if self.loss is None:
            self.bind(RunContext(trainer.data.num_classes, seed=trainer.seed))
        assert self.loss is not None
        super().setup(trainer)
        self.loss.to(trainer.device)
        self.start_learning(self.loss, self.config.meta.meta_lr, self.config.meta.meta_weight_decay)

    def join(self, lead: Method) -> None:
        """Train with the lead's loss, meta-learned by every source (one Adam state)."""
        assert isinstance(lead, AdaptiveRobustLoss) and lead.loss is not None
        self.share_learner(lead)
        self.loss = lead.loss

    def step(self, trainer: Trainer, batch: Batch) -> StepOutput:
        assert self.loss is not None, "setup() was not called"
        if batch.warmup:
            logits = trainer.model(batch.x).float()
            return StepOutput({"ce": LossTerm(per_sample_loss("ce", logits, batch.y))})
        loss, kept = self.loss, None
        if batch.iteration % self.config.meta.meta_interval == 0:
            kept = self.learn(trainer, batch.x, batch.lr,
                              lambda logits: {loss.config.loss: LossTerm(loss(logits, batch.y, learn=True))})
        logits = self.logits(trainer, batch.x, kept).float()
        return StepOutput({loss.config.loss: LossTerm(loss(logits, batch.y))},
                          logs={f"learned_{k}": v.detach() for k, v in loss.values().items()})

    def trained_artifact(self) -> TrainedArtifact | None:
        return TrainedArtifact(self.loss) if self.loss is not None else None
