"""``frozen``: a pretrained weighter applied frozen (CMW-Net Algorithm 3), with task families
re-fitted on the whole training set's class counts, weighting the loss it was meta-trained
with (its ``base_loss``: CE, a robust GCE / SCE, class-balanced CE with this data's class
weights, or the soft-label loss of CMW-Net-SL, the paper's transfer setting) or, on request, another."""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Any

from weightzoo.bilevel.metaset import ModelEMA
from weightzoo.losses import per_sample_loss
from weightzoo.methods.base import Batch, Method, StepOutput
from weightzoo.methods.plain import refuse_double_balance
from weightzoo.methods.registry import register_method
from weightzoo.weighting.learned_loss import LearnedRobustLoss
from weightzoo.weighting.nets import BASE_LOSSES, CMWNet
from weightzoo.weighting.reduction import LossTerm
from weightzoo.weighting.sample_weighting import SampleWeighting
from weightzoo.weighting.soft_labels import SoftLabelBatch

if TYPE_CHECKING:
    from weightzoo.training.engine import Schedule, Trainer


def _pretrained(cls: type, method: str, key: str, name: str, revision: str | None) -> Any:
    """``cls.from_pretrained(name)`` for a frozen method's ``key = NAME`` option."""
    if not name:
        raise ValueError(f"method {method!r} needs {key} = NAME (a zoo name, directory or repo)")
    return cls.from_pretrained(name, revision=revision)


@dataclass
class FrozenConfig:
    """weighter: zoo name, directory or Hub repo id ``org/name[@rev]``; revision: Hub
    revision; family_seed: k-means seed of the re-fitted families; loss: ``ce`` (weighted
    CE; likewise ``gce``, ``sce``, ``class-balanced``), ``sl`` (the soft-label loss of
    CMW-Net-SL, with an EMA teacher of decay ``teacher_decay`` and training-batch mixup
    ``mixup_alpha``) or ``auto`` (the loss the weighter was meta-trained with, its
    ``base_loss``)."""

    weighter: str = ""
    revision: str | None = None
    family_seed: int = 0
    loss: str = "auto"
    mixup_alpha: float = 1.0
    teacher_decay: float = 0.997

    def __post_init__(self) -> None:
        if self.loss not in ("auto", *BASE_LOSSES):
            raise ValueError(f"method.loss must be one of {('auto', *BASE_LOSSES)}")


@register_method("frozen", FrozenConfig, description="a pretrained weighter, frozen")
class FrozenWeighting(Method):
    """A loss weighted by a frozen weighter; warm-up iterations use the plain mean. Under
    ``schedule.rebalance = "deferred"`` the weighted losses are re-balanced by class from the
    first milestone (the weights still come from the unbalanced CE).

    weighter: the weighter itself, or None to load ``config.weighter`` by name.
    """

    rebalances = True

    def __init__(self, config: FrozenConfig | None = None, *, weighter: CMWNet | None = None) -> None:
        self.config = config or FrozenConfig()
        if weighter is None:
            weighter = _pretrained(CMWNet, "frozen", "weighter", self.config.weighter, self.config.revision)
        self.weighter = weighter
        self.loss = weighter.config.base_loss if self.config.loss == "auto" else self.config.loss
        self.weighting: SampleWeighting | None = None
        self.teacher: ModelEMA | None = None

    @property
    def identity(self) -> str:
        return f"weighter:{self.weighter.config.kind}" + (f":{self.loss}" if self.loss != "ce" else "")

    def check_schedule(self, schedule: Schedule) -> None:
        super().check_schedule(schedule)
        refuse_double_balance(self.loss, schedule)

    def setup(self, trainer: Trainer) -> None:
        self.weighting = SampleWeighting.fit(
            self.weighter.eval().requires_grad_(False), trainer.global_class_counts(),
            seed=self.config.family_seed,
        ).to(trainer.device)
        if self.loss == "sl":
            self.teacher = ModelEMA(trainer.module, self.config.teacher_decay)

    def step(self, trainer: Trainer, batch: Batch) -> StepOutput:
        assert self.weighting is not None, "setup() was not called"
        # labels were range-checked when the data was prepared
        weights_of = partial(self.weighting.weights, checked=True)
        if self.teacher is not None and not batch.warmup:
            sl = SoftLabelBatch.draw(self.teacher.module, batch.x, self.config.mixup_alpha)
            terms = sl.terms(trainer.model(sl.x).float(), batch.y, weights_of)
            return StepOutput(terms, terms["label"].weights)
        # the SL loss warms up with plain CE, as its meta-training did
        loss = "ce" if self.loss == "sl" else self.loss
        term = self.weighting.term(loss, trainer.model(batch.x).float(), batch.y, weighted=not batch.warmup)
        term = replace(term, losses=trainer.rebalanced(term.losses, batch))
        return StepOutput({"ce": term}, term.weights)

    def after_step(self, trainer: Trainer, batch: Batch, output: StepOutput) -> None:
        if self.teacher is not None:
            self.teacher.update(trainer.module)

    def state_dict(self) -> dict[str, Any]:
        return {"teacher": self.teacher.state_dict()} if self.teacher is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.teacher is not None and "teacher" in state:
            self.teacher.load_state_dict(state["teacher"])


@dataclass
class FrozenLossConfig:
    """loss: a learned robust loss by zoo name, directory or Hub repo id; revision: Hub revision."""

    loss: str = ""
    revision: str | None = None


@register_method("frozen-loss", FrozenLossConfig, description="a meta-learned robust loss, frozen")
class FrozenLoss(Method):
    """Training with a learned robust loss's fixed hyper-parameters (CE during
    ``schedule.warmup_epochs``, which ``weightzoo apply`` sets to 0 for a learned loss unless
    asked: it trains from the first step as the robust-loss baselines do); re-balanced by class
    from the first milestone under ``schedule.rebalance = "deferred"``."""

    rebalances = True

    def __init__(
        self, config: FrozenLossConfig | None = None, *, loss: LearnedRobustLoss | None = None
    ) -> None:
        self.config = config or FrozenLossConfig()
        if loss is None:
            loss = _pretrained(LearnedRobustLoss, "frozen-loss", "loss", self.config.loss,
                               self.config.revision)
        self.loss = loss

    @property
    def identity(self) -> str:
        return f"loss:{self.loss.config.loss}"

    def setup(self, trainer: Trainer) -> None:
        self.loss.to(trainer.device)

    def step(self, trainer: Trainer, batch: Batch) -> StepOutput:
        logits = trainer.model(batch.x).float()
        losses = per_sample_loss("ce", logits, batch.y) if batch.warmup else self.loss(logits, batch.y)
        losses = trainer.rebalanced(losses, batch)
        return StepOutput({self.loss.config.loss: LossTerm(losses)})
