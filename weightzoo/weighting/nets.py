"""Weighting networks: MW-Net (Shu et al. 2019) and CMW-Net (Shu et al. 2023).

A weighter maps a per-sample loss (detached) and, for CMW-Net, the task family of the
sample's label to a weight in [0, 1].  MW-Net is CMW-Net with a single family.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from weightzoo.artifact.mixin import ArtifactMixin
from weightzoo.typed_tables import DictRecord

WeighterKind = Literal["mwnet", "cmwnet"]
Normalization = Literal["sum", "mean", "detached_sum"]
InputNorm = Literal["none", "log_classes", "batch_mean"]

NORMALIZATIONS: tuple[str, ...] = ("sum", "mean", "detached_sum")
INPUT_NORMS: tuple[str, ...] = ("none", "log_classes", "batch_mean")
# the per-sample losses a weighter's weights multiply (``gce`` / ``sce`` / ``class-balanced``
# with the defaults of ``weightzoo.losses``; ``class-balanced`` from the class counts of the data
# the weighter is applied to); ``sl`` is CMW-Net-SL's soft-label loss
WEIGHTED_LOSSES: tuple[str, ...] = ("ce", "gce", "sce", "class-balanced")
BASE_LOSSES: tuple[str, ...] = (*WEIGHTED_LOSSES, "sl")


@dataclass
class WeighterConfig(DictRecord):
    """Everything needed to rebuild a weighter and to apply it faithfully elsewhere.

    kind: ``mwnet`` (one head) or ``cmwnet`` (``num_families`` heads).
    hidden: width of the shared hidden layer (100 in both papers).
    num_families: number of heads K (task families); 1 for MW-Net.
    input_norm: how the raw loss is scaled before entering the net. ``log_classes``
        divides by ln C of the data it is applied to, so that a weighter trained on
        C_source classes sees the same input range on C_target classes; ``batch_mean``
        divides by the mean (finite) loss of the batch being weighted, so that the weighter
        reads how a sample's loss compares with its batch's, whatever the data, model or
        training stage.
    normalization: how weights reduce a batch of losses (see ``weightzoo.reduction``).
    base_loss: the per-sample loss the weighter's weights multiplied in meta-training:
        ``ce``, a robust loss ``gce`` / ``sce``, ``class-balanced`` CE (its class weights from the
        counts of the data it is applied to; the weighter still reads the sample's CE), or
        ``sl`` (CMW-Net-SL's soft-label loss).
    source_num_classes: number of classes of the meta-training data.
    metadata: provenance (source data, bias, method, metrics, family centres); the
        artifact module reads and writes it as a typed ``Provenance`` record.
    """

    kind: WeighterKind = "cmwnet"
    hidden: int = 100
    num_families: int = 3
    input_norm: InputNorm = "log_classes"
    normalization: Normalization = "sum"
    base_loss: str = "ce"
    source_num_classes: int = 10
    metadata: dict[str, Any] = field(default_factory=dict)
    record_name: ClassVar[str] = "weighter config"

    def __post_init__(self) -> None:
        for name in ("hidden", "num_families", "source_num_classes"):
            value = getattr(self, name)
            # numpy integers are fine; floats, bools and strings are not (e.g. from a hand-edited file)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            setattr(self, name, int(value))
        if not isinstance(self.metadata, dict):
            raise ValueError(f"metadata must be a dict, got {type(self.metadata).__name__}")
        if self.kind not in ("mwnet", "cmwnet"):
            raise ValueError(f"unknown weighter kind {self.kind!r}; expected 'mwnet' or 'cmwnet'")
        if self.kind == "mwnet" and self.num_families != 1:
            raise ValueError("an MW-Net weighter has exactly one family (num_families=1)")
        if self.num_families < 1 or self.hidden < 1:
            raise ValueError("num_families and hidden must be positive")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization {self.normalization!r}; one of {NORMALIZATIONS}")
        if self.input_norm not in INPUT_NORMS:
            raise ValueError(f"unknown input_norm {self.input_norm!r}; one of {INPUT_NORMS}")
        if self.base_loss not in BASE_LOSSES:
            raise ValueError(f"unknown base_loss {self.base_loss!r}; one of {BASE_LOSSES}")
        if self.source_num_classes < 1:
            raise ValueError("source_num_classes must be >= 1")

    @property
    def weighted_loss(self) -> str:
        """The per-sample loss a plain weighted term multiplies: ``base_loss``, or CE for a
        soft-label weighter (whose own loss takes a teacher's soft labels too)."""
        return self.base_loss if self.base_loss in WEIGHTED_LOSSES else "ce"


def loss_input_scale(input_norm: str, num_classes: int) -> float:
    """Factor applied to raw losses before they enter the weighter (1 for ``batch_mean``,
    whose factor is the batch's: see :func:`weighter_input`)."""
    if input_norm in ("none", "batch_mean"):
        return 1.0
    # ln 1 = 0: a one-class problem has zero CE everywhere; keep the input unscaled.
    return 1.0 / math.log(num_classes) if num_classes > 1 else 1.0


def weighter_input(losses: torch.Tensor, input_norm: str, num_classes: int) -> torch.Tensor:
    """Raw per-sample losses (B,) -> the weighter's input (B,): scaled by
    :func:`loss_input_scale`, or divided by the batch's mean finite loss (``batch_mean``, in
    float64 so that huge losses do not overflow the mean; a batch whose mean is not positive
    is left unscaled). Under torchrun the batch is this process's shard."""
    if input_norm != "batch_mean":
        return losses * loss_input_scale(input_norm, num_classes)
    wide = losses.double()
    finite = torch.isfinite(wide)
    mean = torch.where(finite, wide, torch.zeros_like(wide)).sum() / finite.sum().clamp_min(1)
    return (wide / torch.where(mean > 0, mean, torch.ones_like(mean))).to(losses.dtype)


class CMWNet(ArtifactMixin, nn.Module):
    """Class-aware Meta-Weight-Net: shared Linear(1,h)+ReLU, K heads Linear(h,1)+Sigmoid.

    ``forward(losses[B], families[B] | None, num_classes) -> weights[B]`` in [0, 1].
    The head of each sample is picked by a gather over the (B, K) head outputs.
    ``save_pretrained(dir)``, ``from_pretrained(name)`` and ``push_to_hub(repo)`` follow
    the Hugging Face Hub's model conventions (see ``weightzoo.artifact``).
    """

    def __init__(self, config: WeighterConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        base = config.to_dict() if config is not None else {}
        base.update(overrides)
        self.config = WeighterConfig.from_dict(base)
        self.shared = nn.Sequential(nn.Linear(1, self.config.hidden), nn.ReLU())
        self.heads = nn.Linear(self.config.hidden, self.config.num_families)

    @property
    def num_families(self) -> int:
        return self.config.num_families

    def forward(
        self,
        losses: torch.Tensor,
        families: torch.Tensor | None = None,
        num_classes: int | None = None,
    ) -> torch.Tensor:
        """losses: (B,) raw per-sample losses (detached here); families: (B,) long in [0, K).

        num_classes: classes of the data being weighted (for ``input_norm='log_classes'``);
        defaults to the source data's.
        """
        if losses.dim() != 1:
            raise ValueError(f"losses must be 1-D (batch,), got shape {tuple(losses.shape)}")
        param = self.heads.weight
        x = weighter_input(losses.detach().to(param.dtype), self.config.input_norm,
                           num_classes or self.config.source_num_classes).unsqueeze(1)  # (B, 1)
        # Non-finite and huge losses must not poison the weights: clamp them into the input
        # range (a finite 1e38 would overflow to inf - inf = NaN inside the net).
        x = torch.nan_to_num(x, nan=0.0, posinf=1e4, neginf=0.0).clamp(-1e4, 1e4)
        out = torch.sigmoid(self.heads(self.shared(x)))  # (B, K)
        if self.config.num_families == 1:
            return out.squeeze(1)
        if families is None:
            raise ValueError("CMW-Net needs the task family of every sample (families=...)")
        if families.shape != losses.shape:
            raise ValueError(
                f"families shape {tuple(families.shape)} != losses shape {tuple(losses.shape)}"
            )
        return out.gather(1, families.long().to(out.device).unsqueeze(1)).squeeze(1)

    def curve(self, losses: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
        """Weight of every family at each raw loss value (for ``batch_mean``: each multiple of
        the batch's mean loss): (L,) -> (L, K), no grad."""
        with torch.no_grad():
            x = losses.to(self.heads.weight).unsqueeze(1)
            scale = loss_input_scale(
                self.config.input_norm, num_classes or self.config.source_num_classes
            )
            return torch.sigmoid(self.heads(self.shared(x * scale)))

    def loss_grid(self, points: int = 9, num_classes: int | None = None) -> torch.Tensor:
        """(points,) raw losses from 0 to 3 ln C, C the classes weighted (default: source);
        for ``batch_mean``, multiples of the batch's mean loss from 0 to 4."""
        if self.config.input_norm == "batch_mean":
            return torch.linspace(0.0, 4.0, points)
        c = num_classes or self.config.source_num_classes
        return torch.linspace(0.0, 3.0 * math.log(max(c, 2)), points)


class MWNet(CMWNet):
    """Meta-Weight-Net: Linear(1,100) -> ReLU -> Linear(100,1) -> Sigmoid (CMW-Net, K = 1)."""

    def __init__(self, config: WeighterConfig | None = None, **overrides: Any) -> None:
        overrides = {"kind": "mwnet", "num_families": 1, **overrides}
        super().__init__(config, **overrides)


def build_weighter(config: WeighterConfig) -> CMWNet:
    """The weighter class matching ``config.kind``."""
    return MWNet(config) if config.kind == "mwnet" else CMWNet(config)
