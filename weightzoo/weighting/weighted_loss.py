"""``WeightedLoss``: a frozen weighter as a drop-in loss wrapper (CMW-Net Algorithm 3).

    crit = WeightedLoss.from_pretrained("cmwnet-fmnist-mixed", labels=train_labels)
    loss = crit(logits, targets)            # the weighter's base loss per sample (CE, GCE, SCE
                                            # or class-balanced CE), weighted at each sample's
                                            # CE, normalised
    loss = crit.reduce_losses(per_sample_losses, classes)   # any per-sample loss

Families are re-fitted by k-means on the *target* data's class counts; the loss input is
scaled as the weighter's config says (e.g. loss / ln C of the target data).  The weights
come from :class:`~weightzoo.weighting.sample_weighting.SampleWeighting`, the same path
training uses.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from weightzoo import distributed
from weightzoo.weighting.families import TaskFamilies, class_counts, integer_labels
from weightzoo.weighting.nets import WEIGHTED_LOSSES, CMWNet
from weightzoo.weighting.reduction import total_loss
from weightzoo.weighting.sample_weighting import NEEDS_COUNTS, SampleWeighting, base_and_input_losses
from weightzoo.weighting.soft_labels import soft_label_terms

NONFINITE_MODES = ("raise", "skip")


class WeightedLoss(nn.Module):
    """Weight per-sample losses with a frozen weighter and reduce them per its normalisation.

    weighter: a (frozen) MW-Net / CMW-Net.
    families: task families of the data being trained on (required for CMW-Net, K > 1).
    num_classes: classes of that data (for the loss-input normalisation); defaults to the
        families' class count, else the logits' width.
    warmup_samples: the drop-in warm-up: until the criterion has seen this many training
        samples (counted over calls whose losses require grad, i.e. training steps; a call
        under ``torch.no_grad`` does not count; under torch.distributed a batch counts
        world-size times, as every rank sees its own shard) ``forward`` / ``reduce_losses`` /
        ``soft_label_loss`` return the plain mean of the base loss, as the weighter's own
        meta-training ran it unweighted before weighting. ``samples_seen`` is in ``state_dict``
        (resume a loop and the warm-up resumes). 0: weight from the first step.
    nonfinite: what a sample with NaN / inf logits (or loss) does. ``raise`` (default):
        ``FloatingPointError`` naming the rows, before any gradient exists. ``skip``: the
        sample is left out of the loss and, masked *before* the loss, sends exactly zero
        gradient into its logits. A NaN that came from the model's inputs or activations
        still poisons that model's own backward (0 * NaN = NaN in a layer's weight
        gradient): drop such rows before the forward.
    base_loss: the per-sample loss ``forward`` weights: ``ce``, ``gce``, ``sce`` or
        ``class-balanced`` (defaults of ``weightzoo.losses``; class weights from the counts the
        families were fitted on, so it needs ``class_counts=`` / ``labels=``); None: the one the
        weighter was meta-trained with (CE for a soft-label weighter, whose own loss is
        :meth:`soft_label_loss`). The weighter reads each sample's CE whatever the base loss.
    """

    last_weights: torch.Tensor | None

    def __init__(
        self, weighter: CMWNet, families: TaskFamilies | None = None,
        num_classes: int | None = None, *, nonfinite: str = "raise", warmup_samples: int = 0,
        base_loss: str | None = None,
    ) -> None:
        super().__init__()
        if base_loss is None:
            base_loss = weighter.config.weighted_loss
        if base_loss not in WEIGHTED_LOSSES:
            raise ValueError(f"base_loss must be one of {WEIGHTED_LOSSES}, got {base_loss!r}")
        if base_loss == "class-balanced" and families is None:
            raise ValueError(NEEDS_COUNTS)
        self.base_loss = base_loss
        if nonfinite not in NONFINITE_MODES:
            raise ValueError(f"nonfinite must be one of {NONFINITE_MODES}, got {nonfinite!r}")
        if warmup_samples < 0:
            raise ValueError(f"warmup_samples must be >= 0, got {warmup_samples}")
        self.weighting = SampleWeighting(weighter.eval().requires_grad_(False), families, num_classes)
        self.nonfinite = nonfinite
        self.warmup_samples = int(warmup_samples)
        self.samples_seen = 0
        self.rebalancing = False  # deferred re-balancing, see :meth:`rebalance`
        self.last_weights = None

    @property
    def warming_up(self) -> bool:
        """Still in the plain-CE warm-up (see ``warmup_samples``)."""
        return self.samples_seen < self.warmup_samples

    def rebalance(self, on: bool = True) -> None:
        """Deferred re-balancing (DRW, Cao et al. 2019), e.g. at your first lr drop: from now
        on each sample's base loss is multiplied by its class's class-balanced weight (Cui et
        al. 2019, of the class counts the families were fitted on); the weights still come
        from each sample's CE. ``on=False`` switches it off. In ``state_dict``."""
        if on and self.base_loss == "class-balanced":
            raise ValueError("the class-balanced base loss balances the classes already")
        if on and self.weighting.balance is None:
            raise ValueError("re-balancing weights classes by the training data's counts: build the "
                             "criterion with class_counts= or labels=")
        self.rebalancing = bool(on)

    def get_extra_state(self) -> dict[str, int]:
        return {"samples_seen": self.samples_seen, "rebalancing": int(self.rebalancing)}

    def set_extra_state(self, state: dict[str, int]) -> None:
        self.samples_seen = int(state["samples_seen"])
        self.rebalance(bool(state.get("rebalancing", 0)))  # absent in states saved before 0.8

    @property
    def weighter(self) -> CMWNet:
        return self.weighting.weighter

    @property
    def families(self) -> TaskFamilies | None:
        return self.weighting.families

    @property
    def num_classes(self) -> int | None:
        return self.weighting.num_classes

    @property
    def family_of_class(self) -> torch.Tensor:
        """(C,) family of each class of the data (empty for a weighter without families)."""
        return self.weighting.family_of_class

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path, *,
        class_counts: Sequence[int] | np.ndarray | torch.Tensor | None = None,
        labels: Sequence[int] | np.ndarray | torch.Tensor | None = None,
        num_classes: int | None = None, revision: str | None = None,
        local_files_only: bool = False, seed: int = 0, nonfinite: str = "raise",
        warmup_epochs: float | None = None, base_loss: str | None = None,
    ) -> WeightedLoss:
        """Load a weighter by name (zoo name, directory, ``org/repo[@rev]``) and fit families.

        class_counts: (C,) per-class counts of the training labels, or
        labels: (N,) the training labels as given (noisy labels included).
        warmup_epochs: see :meth:`for_data` (default: the weighter's own meta-training
            warm-up, recorded in its artifact).
        """
        weighter = CMWNet.from_pretrained(
            name_or_path, revision=revision, local_files_only=local_files_only
        )
        return cls.for_data(
            weighter, class_counts=class_counts, labels=labels, num_classes=num_classes, seed=seed,
            nonfinite=nonfinite, warmup_epochs=warmup_epochs, base_loss=base_loss,
        )

    @classmethod
    def for_data(
        cls, weighter: CMWNet, *,
        class_counts: Sequence[int] | np.ndarray | torch.Tensor | None = None,
        labels: Sequence[int] | np.ndarray | torch.Tensor | None = None,
        num_classes: int | None = None, seed: int = 0, nonfinite: str = "raise",
        warmup_epochs: float | None = None, base_loss: str | None = None,
    ) -> WeightedLoss:
        """Wrap ``weighter`` for a dataset given by its class counts or its labels.

        warmup_epochs: unweighted epochs of *this* data before weighting (counted in samples:
            warmup_epochs x the number of training labels); None: the schedule the weighter
            was meta-trained with (``metadata.method.schedule.warmup_epochs`` of its
            artifact, 0 if it records none); 0: weight from the first step.
        base_loss: see the class (None: the weighter's own).
        """
        counts = _resolve_counts(class_counts, labels, num_classes)
        families = None
        if counts is not None:
            families = TaskFamilies.fit(counts, weighter.num_families, seed=seed)
        elif weighter.num_families > 1:
            raise ValueError("pass class_counts= or labels= to fit the task families")
        epochs = meta_training_warmup_epochs(weighter) if warmup_epochs is None else warmup_epochs
        if epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {epochs}")
        if epochs > 0 and counts is None:
            if warmup_epochs is not None:
                raise ValueError("warmup_epochs needs the data's size: pass labels= or class_counts=")
            warnings.warn(f"the weighter was meta-trained after {epochs:g} unweighted epoch(s); without "
                          "labels= or class_counts= the warm-up cannot be sized and is off (pass "
                          "them, or warmup_epochs=0 to silence this)", stacklevel=2)
            epochs = 0
        samples = round(epochs * int(counts.sum())) if epochs > 0 and counts is not None else 0
        return cls(weighter, families, num_classes or (len(counts) if counts is not None else None),
                   nonfinite=nonfinite, warmup_samples=samples, base_loss=base_loss)

    def weights(
        self, losses: torch.Tensor, classes: torch.Tensor, num_classes: int | None = None,
        *, checked: bool = False,
    ) -> torch.Tensor:
        """Weights (B,) for per-sample losses (B,) of samples of classes (B,); no grad.

        num_classes: classes of the data, when neither the constructor nor families gave it.
        checked: the caller has already range-checked ``classes`` (skips a host sync).
        """
        return self.weighting.weights(losses, classes, num_classes, checked=checked)

    def reduce_losses(
        self, losses: torch.Tensor, classes: torch.Tensor, num_classes: int | None = None,
        *, checked: bool = False,
    ) -> torch.Tensor:
        """Weighted, normalised scalar loss from per-sample losses (B,) and classes (B,); the
        weighter reads these losses."""
        if self.nonfinite == "raise" and not checked:
            self._raise_on_nonfinite(~torch.isfinite(losses), "loss")
        return self._reduce(losses, losses, classes, num_classes, checked=checked)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """logits (B, C); targets (B,) class indices or (B, C) soft labels -> scalar."""
        logits, hard, bad_rows = self._checked(logits, targets)
        soft = targets.float() if targets.dim() == 2 else targets
        losses, ce = base_and_input_losses(self.base_loss, logits.float(), soft, self.weighting.balance)
        losses, ce = (torch.where(bad_rows, float("nan"), t) for t in (losses, ce))
        return self._reduce(losses, ce, hard, logits.shape[1], checked=True)

    def _reduce(
        self, losses: torch.Tensor, inputs: torch.Tensor, classes: torch.Tensor,
        num_classes: int | None, *, checked: bool,
    ) -> torch.Tensor:
        """losses (B,) weighted by the weighter at ``inputs`` (B,) and normalised (the plain
        mean while warming up)."""
        weights = self._warmup_weights(losses)
        if weights is None:
            weights = self.weights(inputs, classes, num_classes, checked=checked)
        self.last_weights = weights
        if self.rebalancing:
            losses = losses * self.weighting.balance.to(losses)[classes]
        return self.weighting.reduce(losses, weights)

    def soft_label_loss(
        self, logits: torch.Tensor, targets: torch.Tensor, soft_targets: torch.Tensor,
    ) -> torch.Tensor:
        """The soft-label loss of CMW-Net-SL for a weighter trained with it (``base_loss``
        ``"sl"``): mean_i v_i CE(logits_i, y_i) + (1 - v_i) CE(logits_i, p_i), v from the
        given label's loss. logits (B, C), targets (B,), soft_targets (B, C), e.g. an EMA
        teacher's softmax. With mixup, call it for both label sets and mix with lambda (see
        ``weightzoo.weighting.soft_labels``)."""
        if soft_targets.shape != logits.shape:
            raise ValueError(f"soft targets {tuple(soft_targets.shape)} and logits "
                             f"{tuple(logits.shape)} differ")
        if self.rebalancing:
            raise ValueError("re-balancing (rebalance()) is for forward / reduce_losses: the soft-label "
                             "loss mixes labels, it has no one class to weight by")
        logits, hard, _ = self._checked(logits, targets)

        def weights_of(losses: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
            warm = self._warmup_weights(losses)  # plain CE on the given labels
            return self.weights(losses, classes, logits.shape[1], checked=True) if warm is None else warm

        terms = soft_label_terms(logits.float(), hard, soft_targets.float(), weights_of)
        self.last_weights = terms["label"].weights
        return total_loss(terms)

    def _warmup_weights(self, losses: torch.Tensor) -> torch.Tensor | None:
        """Weights 1 (the plain mean) while warming up, counting the batch when it is a
        training step (its losses require grad); None once the warm-up is over."""
        if not self.warming_up:
            return None
        if losses.requires_grad:
            self.samples_seen += losses.shape[0] * distributed.rank_and_world()[1]
        return torch.ones_like(losses)

    def _checked(
        self, logits: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits with non-finite rows masked, hard labels (B,), non-finite rows (B,) bool),
        after the shape, class-range and non-finite checks (one host sync)."""
        if logits.dim() != 2:
            raise ValueError(f"logits must be (batch, classes), got shape {tuple(logits.shape)}")
        expected = self.family_of_class.numel() or self.num_classes
        if expected and logits.shape[1] != expected:
            raise ValueError(
                f"logits have {logits.shape[1]} classes, the families / num_classes say {expected}"
            )
        if targets.dim() == 2 and targets.shape != logits.shape:
            raise ValueError(
                f"soft targets {tuple(targets.shape)} and logits {tuple(logits.shape)} differ"
            )
        hard = targets if targets.dim() == 1 else targets.argmax(dim=1)
        bad_rows = ~torch.isfinite(logits).all(dim=1)
        limit = logits.shape[1]
        out_of_range = (hard < 0) | (hard >= limit)
        if any(torch.stack([out_of_range.any(), bad_rows.any()]).tolist()):  # one host sync
            if bool(out_of_range.any()):
                raise ValueError(f"target class {int(hard[out_of_range][0])} is out of range for "
                                 f"{limit} classes")
            if self.nonfinite == "raise":
                self._raise_on_nonfinite(bad_rows, "logits")
            # mask before the loss: the skipped rows' logits get exactly zero gradient
            logits = torch.where(bad_rows[:, None], torch.zeros_like(logits), logits)
        return logits, hard.long(), bad_rows

    @staticmethod
    def _raise_on_nonfinite(bad: torch.Tensor, what: str) -> None:
        if bool(bad.any()):
            rows = torch.nonzero(bad).flatten()[:5].tolist()
            raise FloatingPointError(
                f"{int(bad.sum())} of {bad.numel()} samples have non-finite {what} (rows {rows}); "
                "NaN / inf inputs? drop those rows before the forward, or pass nonfinite='skip'"
            )


def meta_training_warmup_epochs(weighter: CMWNet) -> float:
    """The plain-CE warm-up (epochs) the weighter was meta-trained after, from its artifact's
    metadata (0 when it records none, e.g. a weighter built in code)."""
    schedule = weighter.config.metadata.get("method", {}).get("schedule", {})
    return float(schedule.get("warmup_epochs", 0) or 0)


def _resolve_counts(
    counts: Sequence[int] | np.ndarray | torch.Tensor | None,
    labels: Sequence[int] | np.ndarray | torch.Tensor | None,
    num_classes: int | None,
) -> np.ndarray | None:
    if counts is not None and labels is not None:
        raise ValueError("pass either class_counts= or labels=, not both")
    if counts is not None:
        arr = np.asarray(counts.cpu() if isinstance(counts, torch.Tensor) else counts)
        if num_classes is not None and arr.size != num_classes:
            raise ValueError(f"class_counts has {arr.size} entries, num_classes is {num_classes}")
        return arr
    if labels is not None:
        arr = integer_labels(labels)
        if num_classes is None:
            num_classes = int(arr.max()) + 1 if arr.size else 0
            if num_classes > arr.size:
                raise ValueError(
                    f"label {num_classes - 1} implies {num_classes} classes for {arr.size} labels; "
                    "pass num_classes= (or relabel to 0..C-1)"
                )
        return class_counts(arr, num_classes)
    return None
