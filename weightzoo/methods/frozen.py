"""``frozen``: a pretrained weighter applied frozen (CMW-Net Algorithm 3), with task families
re-fitted on the whole training set's class counts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from weightzoo.losses import per_sample_loss
from weightzoo.methods.base import Batch, Method, StepOutput
from weightzoo.methods.registry import register_method
from weightzoo.weighting.nets import CMWNet
from weightzoo.weighting.reduction import LossTerm
from weightzoo.weighting.sample_weighting import SampleWeighting

if TYPE_CHECKING:
    from weightzoo.training.engine import Trainer


@dataclass
class FrozenConfig:
    """weighter: zoo name, directory or Hub repo id ``org/name[@rev]``; revision: Hub
    revision; family_seed: k-means seed of the re-fitted families."""

    weighter: str = ""
    revision: str | None = None
    family_seed: int = 0


@register_method("frozen", FrozenConfig, description="a pretrained weighter, frozen")
class FrozenWeighting(Method):
    """Weighted CE with a frozen weighter; warm-up iterations use the plain mean.

    weighter: the weighter itself, or None to load ``config.weighter`` by name.
    """

    def __init__(self, config: FrozenConfig | None = None, *, weighter: CMWNet | None = None) -> None:
        self.config = config or FrozenConfig()
        if weighter is None:
            if not self.config.weighter:
                raise ValueError("method 'frozen' needs weighter = NAME (a zoo name, directory or repo)")
            weighter = CMWNet.from_pretrained(self.config.weighter, revision=self.config.revision)
        self.weighter = weighter
        self.weighting: SampleWeighting | None = None

    @property
    def identity(self) -> str:
        return f"weighter:{self.weighter.config.kind}"

    def setup(self, trainer: Trainer) -> None:
        self.weighting = SampleWeighting.fit(
            self.weighter.eval().requires_grad_(False), trainer.global_class_counts(),
            seed=self.config.family_seed,
        ).to(trainer.device)

    def step(self, trainer: Trainer, batch: Batch) -> StepOutput:
        assert self.weighting is not None, "setup() was not called"
        losses = per_sample_loss("ce", trainer.model(batch.x).float(), batch.y)
        if batch.warmup:
            return StepOutput({"ce": LossTerm(losses)})
        # labels were range-checked when the data was prepared
        weights = self.weighting.weights(losses, batch.y, checked=True)
        return StepOutput({"ce": LossTerm(losses, weights, self.weighting.normalization)}, weights)
