"""``LearnedRobustLoss``: a robust loss whose hyper-parameters were meta-learned (adaptive
robust losses, ARL; Shu et al., arXiv 2002.06482) -- an artifact like a weighter.

Each hyper-parameter is an unconstrained raw tensor r mapped into its valid range:

- ``gce``:         q in (0, 1), a sigmoid of r
- ``sce``:         alpha, beta > 0, softplus(r)
- ``poly-soft``:   lam > 0, softplus(r); d > 1, 1 + softplus(r)
- ``bi-tempered``: t1 in (0, 1), a sigmoid of r; t2 in (1, 4), 1 + 3 sigmoid(r)

each kept ``MARGIN`` inside its bounds (so that float rounding cannot reach them), so that no
optimizer step can leave the range. ``forward(logits, targets)`` gives the
per-sample loss (B,); ``values()`` the hyper-parameters.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from weightzoo.artifact.mixin import ArtifactMixin
from weightzoo.losses import per_sample_loss
from weightzoo.typed_tables import DictRecord

Range = Literal["unit", "positive", "above_one", "one_to_four"]
MARGIN = 1e-3
_OPEN = {"unit": (0.0, 1.0), "positive": (0.0, math.inf), "above_one": (1.0, math.inf),
         "one_to_four": (1.0, 4.0)}


def _to_value(kind: str, raw: torch.Tensor) -> torch.Tensor:
    low, high = _OPEN[kind]
    if math.isinf(high):
        return low + MARGIN + F.softplus(raw)
    return low + MARGIN + (high - low - 2 * MARGIN) * torch.sigmoid(raw)


def _to_raw(kind: str, value: float) -> float:
    low, high = _OPEN[kind]
    if math.isinf(high):
        return math.log(math.expm1(value - low - MARGIN))
    u = (value - low - MARGIN) / (high - low - 2 * MARGIN)
    return math.log(u / (1.0 - u))

# loss -> hyper-parameter -> (range, default start)
HYPERPARAMETERS: dict[str, dict[str, tuple[Range, float]]] = {
    "gce": {"q": ("unit", 0.7)},
    "sce": {"alpha": ("positive", 0.1), "beta": ("positive", 1.0)},
    "poly-soft": {"lam": ("positive", 5.0), "d": ("above_one", 3.0)},
    "bi-tempered": {"t1": ("unit", 0.8), "t2": ("one_to_four", 1.2)},
}


@dataclass
class RobustLossConfig(DictRecord):
    """kind: ``robust-loss``; loss: one of ``HYPERPARAMETERS``; source_num_classes: classes of
    the meta-training data; metadata: provenance (as a weighter's)."""

    kind: str = "robust-loss"
    loss: str = "gce"
    source_num_classes: int = 10
    metadata: dict[str, Any] = field(default_factory=dict)
    record_name: ClassVar[str] = "robust-loss config"

    def __post_init__(self) -> None:
        if self.kind != "robust-loss":
            raise ValueError(f"a robust-loss config has kind 'robust-loss', got {self.kind!r}")
        if self.loss not in HYPERPARAMETERS:
            raise ValueError(f"unknown learnable loss {self.loss!r}; one of {', '.join(HYPERPARAMETERS)}")
        value = self.source_num_classes
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"source_num_classes must be a positive integer, got {value!r}")
        if not isinstance(self.metadata, dict):
            raise ValueError("metadata must be a dict")



class LearnedRobustLoss(ArtifactMixin, nn.Module):
    """A robust loss with learnable, range-constrained hyper-parameters.

    start: initial values by name (defaults: ``HYPERPARAMETERS``); each must lie strictly
    inside its range.
    """

    config_class = RobustLossConfig

    def __init__(self, config: RobustLossConfig | None = None, **start: float) -> None:
        super().__init__()
        self.config = config or RobustLossConfig()
        spec = HYPERPARAMETERS[self.config.loss]
        unknown = sorted(set(start) - set(spec))
        if unknown:
            raise ValueError(f"{self.config.loss} has no hyper-parameter(s) {', '.join(unknown)} "
                             f"(it has {', '.join(spec)})")
        self.raw = nn.ParameterDict()
        for name, (kind, default) in spec.items():
            value = float(start.get(name, default))
            low, high = _OPEN[kind]
            if not low + MARGIN < value < high - MARGIN:
                raise ValueError(f"{self.config.loss} {name} must be in ({low}, {high}), got {value}")
            self.raw[name] = nn.Parameter(torch.tensor(_to_raw(kind, value)))

    @classmethod
    def from_config(cls, config: RobustLossConfig) -> LearnedRobustLoss:
        return cls(config)

    @property
    def num_classes(self) -> int:
        return self.config.source_num_classes

    def values(self) -> dict[str, torch.Tensor]:
        """The hyper-parameters in their ranges (differentiable w.r.t. the raw tensors)."""
        spec = HYPERPARAMETERS[self.config.loss]
        return {name: _to_value(spec[name][0], raw) for name, raw in self.raw.items()}

    def hyperparameters(self) -> dict[str, float]:
        return {name: float(value.detach()) for name, value in self.values().items()}

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, *, learn: bool = False) -> torch.Tensor:
        """Per-sample loss (B,) of logits (B, C) and targets (B,) or (B, C); differentiable
        w.r.t. the hyper-parameters only with ``learn``."""
        values = self.values()
        if not learn:
            values = {name: value.detach() for name, value in values.items()}
        return per_sample_loss(self.config.loss, logits, targets, **values)

    def loss_grid(self, points: int = 9, num_classes: int | None = None) -> torch.Tensor:
        """(points,) CE values of a sample from ~0 to 3 ln C (C: the source's classes)."""
        c = num_classes or self.config.source_num_classes
        return torch.linspace(0.01, 3.0 * math.log(max(c, 2)), points)

    def curve(self, ce: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
        """The loss of a sample whose labelled class has probability exp(-ce), the rest spread
        evenly over the other classes: (L,) -> (L, 1), no grad."""
        c = max(num_classes or self.config.source_num_classes, 2)
        p = torch.exp(-ce).clamp(1e-6, 1 - 1e-6)
        probs = torch.cat([p[:, None], ((1 - p) / (c - 1))[:, None].expand(-1, c - 1)], dim=1)
        with torch.no_grad():
            return self(torch.log(probs), torch.zeros(len(ce), dtype=torch.long))[:, None]
