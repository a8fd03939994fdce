"""``SampleWeighting``: the one weighting path, shared by meta-training, frozen training and
``WeightedLoss`` in user code.

It holds a weighter, the task families of the data being trained on (fitted on the whole
training set's class counts — all ranks' shards under torchrun), the class-balanced weights
of those counts (for the ``class-balanced`` base loss), the number of classes of that data
(for the loss-input normalisation) and the weighter's normalisation mode.
Weights are computed in (at least) fp32 with autocast off, and a non-finite loss gets weight 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from weightzoo.losses import class_balanced_weights, class_weighted_cross_entropy, per_sample_loss
from weightzoo.weighting.families import TaskFamilies
from weightzoo.weighting.nets import WEIGHTED_LOSSES, CMWNet
from weightzoo.weighting.reduction import LossTerm, at_least_fp32, reduce_weighted

NEEDS_COUNTS = ("the class-balanced base loss weights classes by the training data's counts: "
                "pass class_counts= or labels=")


def base_and_input_losses(
    base_loss: str, logits: torch.Tensor, targets: torch.Tensor,
    class_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(the per-sample ``base_loss`` the weights multiply, the per-sample CE the weighter
    reads), both (B,), of logits (B, C) and targets (B,) or soft (B, C); one tensor twice
    for ``ce``. ``class_weights`` (C,): the ``class-balanced`` base loss's weights, from the
    training data's class counts."""
    if base_loss not in WEIGHTED_LOSSES:
        raise ValueError(f"base loss {base_loss!r} is not one of {WEIGHTED_LOSSES}")
    ce = per_sample_loss("ce", logits, targets)
    if base_loss == "ce":
        return ce, ce
    if base_loss != "class-balanced":
        return per_sample_loss(base_loss, logits, targets), ce
    if class_weights is None:
        raise ValueError(NEEDS_COUNTS)
    return class_weighted_cross_entropy(logits, targets, class_weights), ce


class SampleWeighting(nn.Module):
    """Weights (B,) for per-sample losses (B,) of samples of classes (B,).

    weighter: an MW-Net / CMW-Net (trainable while meta-training, frozen otherwise).
    families: task families of the data (required for CMW-Net, K > 1).
    num_classes: classes of that data; defaults to the families' class count.
    """

    def __init__(
        self, weighter: CMWNet, families: TaskFamilies | None = None, num_classes: int | None = None,
    ) -> None:
        super().__init__()
        if weighter.num_families > 1 and families is None:
            raise ValueError(
                "a CMW-Net weighter needs task families: pass class_counts= or labels= "
                "(the training labels) so that families can be fitted"
            )
        if families is not None and families.num_families != weighter.num_families:
            raise ValueError(
                f"families have K={families.num_families}, the weighter has "
                f"{weighter.num_families} heads"
            )
        self.weighter = weighter
        self.families = families
        self.num_classes = num_classes or (families.num_classes if families is not None else None)
        table = families.family_of_class if families is not None else torch.zeros(0, dtype=torch.long)
        self.register_buffer("family_of_class", table.clone(), persistent=False)
        # (C,) class-balanced weights of the data's class counts (for that base loss); empty without families
        balance = (class_balanced_weights(families.class_counts).float() if families is not None
                   else torch.zeros(0))
        self.register_buffer("class_weights", balance, persistent=False)

    @classmethod
    def fit(
        cls, weighter: CMWNet, class_counts: Sequence[int] | np.ndarray | torch.Tensor, *,
        seed: int = 0,
    ) -> SampleWeighting:
        """Fit the weighter's K families on per-class counts (C,) of the training labels."""
        families = TaskFamilies.fit(class_counts, weighter.num_families, seed=seed)
        return cls(weighter, families, families.num_classes)

    @property
    def balance(self) -> torch.Tensor | None:
        """(C,) the class-balanced weights (Cui et al. 2019) of the class counts the families
        were fitted on; None without families."""
        return self.class_weights if self.class_weights.numel() else None

    @property
    def normalization(self) -> str:
        return self.weighter.config.normalization

    def check_classes(self, classes: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
        """``classes`` as long, after one range check against the data's classes (one host sync)."""
        classes = classes.long()
        limit = self.family_of_class.numel() or self.num_classes or num_classes
        if not limit:
            return classes
        out_of_range = (classes < 0) | (classes >= limit)
        if bool(out_of_range.any()):
            bad = classes[out_of_range][0]
            raise ValueError(f"target class {int(bad)} is out of range for {limit} classes")
        return classes

    def weights(
        self, losses: torch.Tensor, classes: torch.Tensor, num_classes: int | None = None, *,
        grad: bool = False, checked: bool = False,
    ) -> torch.Tensor:
        """Weights (B,) in [0, 1]; differentiable w.r.t. the weighter only when ``grad``.

        num_classes: classes of the data, when neither the constructor nor families gave it.
        checked: the caller has range-checked ``classes`` already (skips a host sync).
        """
        if losses.shape != classes.shape:
            raise ValueError(f"losses {tuple(losses.shape)} and classes {tuple(classes.shape)} differ")
        classes = classes.long() if checked else self.check_classes(classes, num_classes)
        if self.family_of_class.device != losses.device:
            self.to(losses.device)  # the device follows the inputs
        families = self.family_of_class[classes] if self.family_of_class.numel() else None
        with torch.set_grad_enabled(grad), torch.autocast(losses.device.type, enabled=False):
            weights = self.weighter(at_least_fp32(losses), families, self.num_classes or num_classes)
        return torch.where(torch.isfinite(losses), weights, torch.zeros_like(weights))

    def term(
        self, base_loss: str, logits: torch.Tensor, targets: torch.Tensor, *,
        grad: bool = False, weighted: bool = True,
    ) -> LossTerm:
        """The weighted training term: per-sample ``base_loss`` (one of ``WEIGHTED_LOSSES``) of
        logits (B, C) and range-checked labels (B,), each sample weighted by the weighter at
        its *cross entropy* (the weighter's input whatever the base loss); ``weighted=False``:
        the plain mean (warm-up). ``grad``: weights differentiable w.r.t. the weighter."""
        losses, ce = base_and_input_losses(base_loss, logits, targets, self.balance)
        if not weighted:
            return LossTerm(losses)
        weights = self.weights(ce.detach(), targets, grad=grad, checked=True)
        return LossTerm(losses, weights, self.normalization)

    def reduce(self, losses: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Scalar loss from losses (B,) and weights (B,) under the weighter's normalisation."""
        return reduce_weighted(at_least_fp32(losses), weights, self.normalization)
