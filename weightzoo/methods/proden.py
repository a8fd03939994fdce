"""``proden``: PRODEN partial-label learning (Lv et al. 2020; CMW-Net §7.1, stage 1).

Every training sample i has a candidate set S_i (``TrainingSet.candidates``) and a label
distribution q_i, uniform over S_i at the start. The loss of a batch is
``-(1/B) sum_i sum_k q_ik log p_ik``; after each real step q_i of the batch's samples
becomes the model's softmax of that step's forward restricted to S_i and renormalised
(the reference code's order), so q stays a distribution on the set, zero outside it.
The sample's label as given (``y``) is never read; q is checkpointed.

Option: a frozen weighter weights the per-sample PRODEN losses (DESIGN.md), by the family
of each sample's current predicted label argmax q_i, families re-fitted every epoch on the
counts of the current predicted labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from weightzoo import distributed
from weightzoo.methods.base import Batch, Method, StepOutput
from weightzoo.methods.registry import register_method
from weightzoo.weighting.nets import CMWNet
from weightzoo.weighting.reduction import LossTerm
from weightzoo.weighting.sample_weighting import SampleWeighting

if TYPE_CHECKING:
    from weightzoo.training.engine import Trainer, TrainingSet


@dataclass
class ProdenConfig:
    """weighter: optional frozen weighter (zoo name, directory or Hub repo id) weighting the
    per-sample PRODEN losses; revision: its Hub revision; family_seed: k-means seed of its
    families."""

    weighter: str = ""
    revision: str | None = None
    family_seed: int = 0


def require_candidate_sets(data: TrainingSet) -> torch.Tensor:
    """The candidate sets (N, C) of ``data``; a one-line error for data without them."""
    if data.candidates is None:
        raise ValueError("PRODEN needs partial-label data: a bias partial:q or partial-pair:q, "
                         "or an npz file with candidate sets S")
    return data.candidates


def restricted_softmax(logits: torch.Tensor, sets: torch.Tensor) -> torch.Tensor:
    """The softmax of logits (B, C) restricted to the candidate sets (B, C) bool and
    renormalised: zero outside each set, summing to 1 (uniform on a set where every
    candidate's probability underflows)."""
    probs = torch.softmax(logits.detach().float(), dim=1) * sets
    total = probs.sum(1, keepdim=True)
    uniform = sets.float() / sets.sum(1, keepdim=True)
    return torch.where(total > 0, probs / total.clamp_min(torch.finfo(probs.dtype).tiny), uniform)


@register_method("proden", ProdenConfig, baseline=True,
                 description="PRODEN partial-label learning (Lv et al. 2020); needs candidate sets")
class Proden(Method):
    """PRODEN with label distributions q (N, C) kept per training sample.

    weighter: a weighter to apply frozen to the per-sample losses (else ``config.weighter``
    is loaded when set).
    """

    def __init__(self, config: ProdenConfig | None = None, *, weighter: CMWNet | None = None) -> None:
        self.config = config or ProdenConfig()
        if weighter is None and self.config.weighter:
            weighter = CMWNet.from_pretrained(self.config.weighter, revision=self.config.revision)
        self.weighter = weighter
        self.sets: torch.Tensor | None = None
        self.q: torch.Tensor | None = None
        self.clean_y: torch.Tensor | None = None
        self.weighting: SampleWeighting | None = None
        self._update: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def identity(self) -> str:
        return "proden" + (":weighted" if self.weighter is not None else "")

    def setup(self, trainer: Trainer) -> None:
        sets = require_candidate_sets(trainer.data)
        if trainer.schedule.batch_size % trainer.world:
            raise ValueError(f"the global batch size {trainer.schedule.batch_size} does not divide by "
                             f"the world size {trainer.world}: PRODEN's updates need equal shards")
        self.sets = sets.to(trainer.device, torch.bool)
        self.q = self.sets.float() / self.sets.sum(1, keepdim=True)
        self.clean_y = trainer.data.clean_y  # reports only (label accuracy of q)
        if self.weighter is not None:
            self.weighter.to(trainer.device).eval().requires_grad_(False)

    def predicted_labels(self) -> torch.Tensor:
        """argmax q (N,) on the CPU: the labels PRODEN predicts for its training set."""
        assert self.q is not None, "setup() was not called"
        return self.q.argmax(1).cpu()

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        if self.weighter is not None:  # q is the same on every rank: so are the counts
            counts = torch.bincount(self.predicted_labels(), minlength=trainer.data.num_classes)
            self.weighting = SampleWeighting.fit(
                self.weighter, counts, seed=self.config.family_seed).to(trainer.device)

    def step(self, trainer: Trainer, batch: Batch) -> StepOutput:
        assert self.q is not None and self.sets is not None, "setup() was not called"
        index = batch.index.to(trainer.device)
        logits = trainer.model(batch.x).float()
        q = self.q[index]
        losses = -(q * F.log_softmax(logits, dim=1)).sum(1)
        self._update = (index, restricted_softmax(logits, self.sets[index]))
        if self.weighting is None or batch.warmup:
            return StepOutput({"proden": LossTerm(losses)})
        weights = self.weighting.weights(losses, q.argmax(1), checked=True)
        return StepOutput({"proden": LossTerm(losses, weights, self.weighting.normalization)}, weights)

    def after_step(self, trainer: Trainer, batch: Batch, output: StepOutput) -> None:
        assert self.q is not None and self._update is not None
        index, new_q = self._update
        if trainer.world > 1:  # every rank keeps all of q
            index, new_q = distributed.all_gather_rows(index), distributed.all_gather_rows(new_q)
        self.q[index] = new_q
        self._update = None

    def epoch_metrics(self) -> dict[str, float]:
        """label_acc: accuracy of argmax q against the hidden true labels (when known; a
        report only); q_confidence: mean max_k q_ik."""
        assert self.q is not None
        metrics = {"q_confidence": float(self.q.max(1).values.mean())}
        if self.clean_y is not None:
            metrics["label_acc"] = float((self.predicted_labels() == self.clean_y).float().mean())
        return metrics

    def state_dict(self) -> dict[str, Any]:
        assert self.q is not None
        return {"q": self.q.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        assert self.q is not None
        if tuple(state["q"].shape) != tuple(self.q.shape):
            raise ValueError(f"checkpointed label distributions have shape {tuple(state['q'].shape)}, "
                             f"the data needs {tuple(self.q.shape)}")
        self.q = state["q"].to(self.q.device)
