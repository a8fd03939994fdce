"""The CMW-Net-SL loss (CMW-Net §3.6, Eq. 14; the reference code's mixup form): a weight v
on the given label's CE and 1 - v on the CE against a soft label p~, the EMA teacher's
prediction, on mixup inputs x~ = lam x + (1 - lam) x[perm], lam = max(lam, 1 - lam):

    lam [v CE(f(x~), y) + (1 - v) CE(f(x~), p~)]
      + (1 - lam) [v[perm] CE(f(x~), y[perm]) + (1 - v[perm]) CE(f(x~), p~[perm])],

a batch mean, with v = V(CE(f(x~), y), family of y) (so the permuted partner's weight is
v[perm]). Shared by meta-training (``cmwnet-sl``), frozen use (``frozen`` with ``loss =
"sl"``) and ``WeightedLoss.soft_label_loss``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from weightzoo.losses import per_sample_loss
from weightzoo.training.views import mixup_pairing
from weightzoo.weighting.reduction import LossTerm

WeightsOf = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def soft_label_terms(
    logits: torch.Tensor, y: torch.Tensor, soft: torch.Tensor, weights_of: WeightsOf,
    lam: float = 1.0, perm: torch.Tensor | None = None,
) -> dict[str, LossTerm]:
    """The SL loss as named terms. logits (B, C) of the (mixed) inputs, y (B,) labels, soft
    (B, C) soft labels, weights_of(losses (B,), classes (B,)) -> v (B,)."""
    label = per_sample_loss("ce", logits, y)
    v = weights_of(label, y)
    terms = {"label": LossTerm(label, v, "mean", lam),
             "pseudo": LossTerm(per_sample_loss("ce", logits, soft), 1.0 - v, "mean", lam)}
    if perm is not None:
        terms["label_mix"] = LossTerm(per_sample_loss("ce", logits, y[perm]), v[perm], "mean", 1.0 - lam)
        terms["pseudo_mix"] = LossTerm(per_sample_loss("ce", logits, soft[perm]), 1.0 - v[perm], "mean",
                                       1.0 - lam)
    return terms


@dataclass(frozen=True)
class SoftLabelBatch:
    """One batch's SL inputs: x (B, ...) the mixed inputs, soft (B, C) the teacher's
    probabilities on the un-mixed inputs, lam and perm (B,) of the mixup (None: no mixup)."""

    x: torch.Tensor
    soft: torch.Tensor
    lam: float
    perm: torch.Tensor | None

    @classmethod
    def draw(cls, teacher: nn.Module, x: torch.Tensor, mixup_alpha: float) -> SoftLabelBatch:
        """Teacher soft labels (no grad), then mixup with lambda ~ Beta(alpha, alpha),
        max(lambda, 1 - lambda); ``mixup_alpha`` 0 turns mixup off."""
        with torch.no_grad():
            soft = F.softmax(teacher(x).float(), dim=1)
        if mixup_alpha <= 0:
            return cls(x, soft, 1.0, None)
        lam, perm = mixup_pairing(x.shape[0], mixup_alpha, dominant=True)
        perm = perm.to(x.device)
        return cls(lam * x + (1.0 - lam) * x[perm], soft, lam, perm)

    def terms(self, logits: torch.Tensor, y: torch.Tensor, weights_of: WeightsOf) -> dict[str, LossTerm]:
        return soft_label_terms(logits, y, self.soft, weights_of, self.lam, self.perm)
