"""The partial-label regime (CMW-Net §7.1): stage 1 trains PRODEN on the candidate sets;
stage 2 trains a fresh model with any method (a meta-trained CMW-Net with its meta set
rebuilt from the training data, a frozen weighter, a baseline) on PRODEN's predicted
labels argmax q as (noisy) labels. Stage 2 sees the predicted labels only: the hidden true
labels go to reports (the accuracy of the predicted labels, which samples are noisy).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from weightzoo.methods.proden import Proden, ProdenConfig
from weightzoo.training.engine import Schedule, Trainer, TrainingSet

if TYPE_CHECKING:
    from weightzoo.pipeline import PreparedData

REGIMES = ("supervised", "partial")
APPLY_REGIMES = (*REGIMES, "fixmatch")  # apply also runs FixMatch (weightzoo.methods.fixmatch)
STAGE1_DIR = "proden"
STAGE2_INITS = ("proden", "scratch")


@dataclass
class RegimeSection:
    """The recipe's ``[regime]``: ``name`` is ``supervised`` (default) or ``partial`` (PRODEN
    first, then ``[method]`` on its predicted labels; stage 1 uses the recipe's model and
    schedule); ``proden_weighter``: a frozen weighter that also weights stage 1's per-sample
    losses (families from the current predicted labels); ``stage2_init``: stage 2's model
    starts from PRODEN's trained model (``proden``) or from the seeded initialisation
    (``scratch``)."""

    name: str = "supervised"
    proden_weighter: str = ""
    stage2_init: str = "scratch"

    def __post_init__(self) -> None:
        if self.name not in REGIMES:
            raise ValueError(f"regime.name must be one of {REGIMES}, got {self.name!r}")
        if self.stage2_init not in STAGE2_INITS:
            raise ValueError(f"regime.stage2_init must be one of {STAGE2_INITS}")


@dataclass(frozen=True)
class ProdenStage:
    """Stage 1's result: its history, the data for stage 2 (labels = argmax q) and the
    trained model's state (parameters and buffers, on the CPU)."""

    history: list[dict[str, Any]]
    data: PreparedData
    model_state: dict[str, torch.Tensor]

    def init(self, model: nn.Module, how: str) -> nn.Module:
        """Stage 2's ``model``: PRODEN's trained weights loaded (``proden``) or as built."""
        if how == "proden":
            model.load_state_dict(self.model_state)
        return model


def relabelled(data: PreparedData, labels: torch.Tensor) -> PreparedData:
    """``data`` with training labels ``labels`` (N,) and no candidate sets; the bias report
    gains the predicted labels' accuracy and class counts (against the hidden truth)."""
    train = data.train
    clean = train.clean_y
    noisy = labels != clean if clean is not None else torch.zeros(len(labels), dtype=torch.bool)
    report = {**data.bias.report, "proden": {
        "label_acc": None if clean is None else float((~noisy).float().mean()),
        "predicted_class_counts": torch.bincount(labels, minlength=train.num_classes).tolist(),
    }}
    stage2 = TrainingSet(x=train.x, y=labels, test_x=train.test_x, test_y=train.test_y,
                         num_classes=train.num_classes, clean_y=clean)
    bias = replace(data.bias, labels=labels, is_noisy=noisy, report=report, candidates=None)
    return replace(data, train=stage2, bias=bias)


def proden_stage(
    model: nn.Module, data: PreparedData, schedule: Schedule, out_dir: Path, *, seed: int,
    device: str | None, resume: bool, progress: bool, weighter: str = "",
) -> ProdenStage:
    """Train PRODEN on ``data``'s candidate sets into ``out_dir`` (checkpointed, resumable)."""
    method = Proden(ProdenConfig(weighter=weighter, family_seed=seed))
    trainer = Trainer(model, data.train, schedule, device=device, seed=seed, out_dir=out_dir,
                      progress=progress, desc="stage 1 [proden]")
    history = trainer.fit(method, resume=resume)
    state = {k: v.detach().cpu().clone() for k, v in trainer.module.state_dict().items()}
    return ProdenStage(history, relabelled(data, method.predicted_labels()), state)
