"""Which shipped zoo entry to use for the bias a user declares: the zoo's selection rule,
with the transfer cells the entry was measured on (its card's ``transfer`` record).

The rule (v0.8, benchmarks/README.md "Transfer"): per declared bias, the entry, applied as is
or (for the long-tailed biases) with deferred re-balancing, with the best mean accuracy on the
transfer matrix's two small MLP targets; the small CNN and full MNIST test it. It needs no
test labels, only the bias type. Where the measured cells say that a plain robust loss did
better, :class:`Recommendation` says which.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from weightzoo.artifact import hub
from weightzoo.artifact.card import cell_seeds
from weightzoo.artifact.format import Provenance, read_config

RULE_VERSION = "v0.8"
# declared bias -> (the transfer-matrix bias its cells are recorded under, the zoo entry, how it
# is applied: ``Schedule.rebalance``, "none" or "deferred")
RULE: dict[str, tuple[str, str, str]] = {
    "symmetric": ("sym40", "arl-gce-fmnist-multi", "none"),
    "asymmetric": ("asym40", "cmwnet-sl-fmnist-multi", "none"),
    "longtail": ("lt50", "cmwnet-fmnist-longtail", "deferred"),
    "longtail+noise": ("lt50+sym40", "arl-gce-fmnist-sym40", "deferred"),
}
# the suffix of a card's cells measured with ``rebalance = "deferred"`` ("digits-mlp lt50 deferred")
DEFERRED = "deferred"


@dataclass(frozen=True)
class MeasuredCell:
    """One transfer cell (``target bias``): test accuracies (fractions), mean over seeds."""

    cell: str
    acc: float
    ce: float
    best_robust: str
    best_robust_acc: float
    # the best of the baselines re-balanced the same way (``drw-ce``, ...), where the cell was
    # measured with deferred re-balancing
    best_drw: str | None = None
    best_drw_acc: float | None = None
    seeds: int = 0  # how many seeds the means are over


@dataclass(frozen=True)
class Recommendation:
    """The entry the rule picks for ``bias``; ``kind``: ``weighter`` (load with
    ``WeightedLoss.from_pretrained``) or ``learned loss`` (``LearnedRobustLoss``);
    ``rebalance``: train with ``Schedule.rebalance`` set to it (``apply --rebalance``)."""

    bias: str
    entry: str
    kind: str
    rule: str
    rebalance: str
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
        (the one best most often there, ``drw-*`` where the one trained with deferred
        re-balancing was); None otherwise."""
        behind = []
        for c in self.cells:
            best_acc, best = max([(c.best_robust_acc, c.best_robust)]
                                 + ([(c.best_drw_acc, c.best_drw)] if c.best_drw is not None else []))
            if c.acc < best_acc:
                behind.append(best)
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
    matrix_bias, entry, rebalance = RULE[bias]
    config = read_config(hub.builtin_root() / entry)
    transfer = Provenance.from_metadata(config.metadata).transfer
    measured_as = matrix_bias + (f" {DEFERRED}" if rebalance == "deferred" else "")
    cells = tuple(
        MeasuredCell(cell, row["acc"], row["ce"], row["best_robust"], row["best_robust_acc"],
                     row.get("best_drw"), row.get("best_drw_acc"), cell_seeds(transfer, row))
        for cell, row in sorted(transfer.get("cells", {}).items()) if cell.split(" ", 1)[1] == measured_as
    )
    kind = "learned loss" if config.kind == "robust-loss" else "weighter"
    return Recommendation(bias, entry, kind, RULE_VERSION, rebalance, cells)
