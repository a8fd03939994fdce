"""Which shipped zoo entry to use for the bias a user declares: the zoo's selection rule,
with the transfer cells the entry was measured on (its card's ``transfer`` record).

The rule (v0.7, benchmarks/README.md "Transfer"): per declared bias, the entry with the best
mean accuracy on the transfer matrix's two small MLP targets; the small CNN and full MNIST
test it. It needs no test labels, only the bias type. Where the measured cells say that a
plain robust loss did better, :class:`Recommendation` says which.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from weightzoo.artifact import hub
from weightzoo.artifact.format import Provenance, read_config

RULE_VERSION = "v0.7"
# declared bias -> (the transfer-matrix bias its cells are recorded under, the zoo entry)
RULE: dict[str, tuple[str, str]] = {
    "symmetric": ("sym40", "arl-gce-fmnist-multi"),
    "asymmetric": ("asym40", "cmwnet-sl-fmnist-multi"),
    "longtail": ("lt50", "cmwnet-cb-fmnist-longtail"),
    "longtail+noise": ("lt50+sym40", "arl-gce-fmnist-sym40"),
}


@dataclass(frozen=True)
class MeasuredCell:
    """One transfer cell (``target bias``): test accuracies (fractions), mean over seeds."""

    cell: str
    acc: float
    ce: float
    best_robust: str
    best_robust_acc: float


@dataclass(frozen=True)
class Recommendation:
    """The entry the rule picks for ``bias``; ``kind``: ``weighter`` (load with
    ``WeightedLoss.from_pretrained``) or ``learned loss`` (``LearnedRobustLoss``)."""

    bias: str
    entry: str
    kind: str
    rule: str
    cells: tuple[MeasuredCell, ...]

    @property
    def beats_ce(self) -> int:
        return sum(c.acc > c.ce for c in self.cells)

    @property
    def ahead_of_robust(self) -> int:
        """Cells where the entry matches or beats the best of GCE, SCE and class-balanced CE."""
        return sum(c.acc >= c.best_robust_acc for c in self.cells)

    @property
    def stronger_robust_loss(self) -> str | None:
        """The robust loss to prefer, when the entry is behind the best one in most cells
        (the one best most often there); None otherwise."""
        behind = [c.best_robust for c in self.cells if c.acc < c.best_robust_acc]
        if 2 * len(behind) <= len(self.cells):
            return None
        return Counter(behind).most_common(1)[0][0]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "cells": [asdict(c) for c in self.cells], "beats_ce": self.beats_ce,
                "ahead_of_robust": self.ahead_of_robust, "stronger_robust_loss": self.stronger_robust_loss}


def recommend(bias: str) -> Recommendation:
    """The shipped entry for a declared ``bias`` (one of ``RULE``) and its measured cells."""
    if bias not in RULE:
        raise ValueError(f"unknown bias {bias!r}; declare one of {', '.join(RULE)}")
    matrix_bias, entry = RULE[bias]
    config = read_config(hub.builtin_root() / entry)
    recorded = Provenance.from_metadata(config.metadata).transfer.get("cells", {})
    cells = tuple(
        MeasuredCell(cell, row["acc"], row["ce"], row["best_robust"], row["best_robust_acc"])
        for cell, row in sorted(recorded.items()) if cell.split(" ", 1)[1] == matrix_bias
    )
    kind = "learned loss" if config.kind == "robust-loss" else "weighter"
    return Recommendation(bias, entry, kind, RULE_VERSION, cells)
