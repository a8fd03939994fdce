"""Plot a weighter's weight-vs-loss curve, one line per task family (PNG via matplotlib)."""

from __future__ import annotations

from pathlib import Path

from weightzoo.weighters import CMWNet

FAMILY_NAMES = {1: ["all classes"], 3: ["small classes", "medium classes", "large classes"]}


def family_names(num_families: int) -> list[str]:
    """Readable names of the families: family 0 holds the smallest classes."""
    return FAMILY_NAMES.get(num_families, [f"family {k}" for k in range(num_families)])


def plot_curves(
    weighter: CMWNet, path: str | Path, num_classes: int | None = None,
    width_px: int = 640, height_px: int = 480, points: int = 200,
) -> Path:
    """Write a PNG of weight vs raw loss (0 .. 3 ln C) for every family; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = weighter.loss_grid(points, num_classes)
    weights = weighter.curve(losses, num_classes).cpu()
    dpi = 100
    fig, ax = plt.subplots(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    try:
        for k, name in enumerate(family_names(weighter.num_families)):
            ax.plot(losses.numpy(), weights[:, k].numpy(), label=f"{k}: {name}")
        cfg = weighter.config
        ax.set_xlabel("per-sample loss (" + cfg.base_loss + ")")
        ax.set_ylabel("weight")
        ax.set_ylim(0, 1)
        ax.set_title(f"{cfg.kind} weighting function")
        ax.grid(alpha=0.3)
        ax.legend(loc="best")
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)
    return Path(path)
