"""An artifact's curve -- a weighter's weight vs loss, one line per task family; a learned
robust loss's value vs the sample's CE -- the one computation behind the model card's
table, ``weightzoo show`` and the PNG plot."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

from weightzoo.weighting.learned_loss import LearnedRobustLoss
from weightzoo.weighting.nets import CMWNet

Curved = CMWNet | LearnedRobustLoss

FAMILY_NAMES = {1: ["all classes"], 3: ["small classes", "medium classes", "large classes"]}


def family_names(num_families: int) -> list[str]:
    """Readable names of the families: family 0 holds the smallest classes."""
    return FAMILY_NAMES.get(num_families, [f"family {k}" for k in range(num_families)])


@dataclass(frozen=True)
class CurveTable:
    """losses (L,) the loss grid (``loss_grid``: raw losses from 0 to 3 ln C, or multiples of
    the batch mean for a ``batch_mean`` weighter); weights (L, K) the curve's values (a
    weighter's weights, or a robust loss's values); names: K line names."""

    losses: torch.Tensor
    weights: torch.Tensor
    names: list[str]

    def markdown(self) -> str:
        header = "| loss | " + " | ".join(self.names) + " |"
        rule = "|---|" + "---|" * len(self.names)
        rows = [
            f"| {loss:.3f} | " + " | ".join(f"{w:.3f}" for w in row) + " |"
            for loss, row in zip(self.losses.tolist(), self.weights.tolist(), strict=True)
        ]
        return "\n".join([header, rule, *rows])

    def text(self) -> str:
        lines = ["loss".rjust(8) + "".join(n.rjust(16) for n in self.names)]
        for loss, row in zip(self.losses.tolist(), self.weights.tolist(), strict=True):
            lines.append(f"{loss:8.3f}" + "".join(f"{w:16.3f}" for w in row))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"loss": [round(v, 6) for v in self.losses.tolist()],
                "weights": {n: [round(v, 6) for v in self.weights[:, k].tolist()]
                            for k, n in enumerate(self.names)}}


def curve_table(artifact: Curved, points: int = 9, num_classes: int | None = None) -> CurveTable:
    """The curve at ``points`` losses of the artifact's ``loss_grid`` (raw losses 0 .. 3 ln C,
    C: ``num_classes`` or the artifact's source classes; multiples of the batch mean 0 .. 4
    for a ``batch_mean`` weighter): a weighter's weight per family, a robust loss's value."""
    losses = artifact.loss_grid(points, num_classes)
    values = artifact.curve(losses, num_classes).cpu()
    names = ([artifact.config.loss] if isinstance(artifact, LearnedRobustLoss)
             else family_names(artifact.num_families))
    return CurveTable(losses, values, names)


def load_pyplot() -> ModuleType:
    """matplotlib.pyplot with the file-only Agg backend.

    Training runs that publish a weighter call this before their first epoch, so that no
    heavy import happens while an interrupted run is finalising (a SIGINT during an import
    at interpreter shutdown can abort the process).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(
    weighter: Curved, path: str | Path, num_classes: int | None = None,
    width_px: int = 640, height_px: int = 480, points: int = 200,
) -> Path:
    """Write a PNG of the curve (weight vs raw loss per family, or the robust loss vs CE)."""
    plt = load_pyplot()
    table = curve_table(weighter, points, num_classes)
    dpi = 100
    fig, ax = plt.subplots(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    try:
        for k, name in enumerate(table.names):
            ax.plot(table.losses.numpy(), table.weights[:, k].numpy(), label=f"{k}: {name}")
        if isinstance(weighter, LearnedRobustLoss):
            ax.set_xlabel("per-sample cross entropy")
            ax.set_ylabel("loss")
            ax.set_title(f"learned {weighter.config.loss}: " + ", ".join(
                f"{k}={v:.3g}" for k, v in weighter.hyperparameters().items()))
        else:
            relative = " / batch mean" if weighter.config.input_norm == "batch_mean" else ""
            ax.set_xlabel(f"per-sample cross entropy{relative} (base loss: {weighter.config.base_loss})")
            ax.set_ylabel("weight")
            ax.set_ylim(0, 1)
            ax.set_title(f"{weighter.config.kind} weighting function")
        ax.grid(alpha=0.3)
        ax.legend(loc="best")
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)
    return Path(path)
