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

from weightzoo.bilevel.metaset import balanced_clean_indices
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


def singleton_meta_set(
    data: PreparedData, candidates: torch.Tensor, per_class: int, seed: int
) -> PreparedData:
    """Stage 2's data with up to ``per_class`` samples per class whose candidate set (N, C)
    holds a single label held out as its meta set (their label is exact: no clean labels are
    read) and trained on no more; the bias report records how many there were."""
    single = candidates.sum(dim=1) == 1
    if not bool(single.any()):
        raise ValueError("no candidate set has a single label, so meta.source = 'singletons' has no "
                         "meta set (generated `partial:q` sets never do: each gets a wrong label); "
                         "use meta.source = 'train'")
    index = torch.nonzero(single).squeeze(1)
    exact = candidates[index].float().argmax(dim=1)  # the one label of each such set
    picked = balanced_clean_indices(exact, per_class, seed)
    chosen, meta_y = index[picked], exact[picked]
    keep = torch.ones(len(candidates), dtype=torch.bool)
    keep[chosen] = False
    train, bias = data.train, data.bias
    num_classes = train.num_classes
    report = {**bias.report, "meta_singletons": {
        "available_per_class": torch.bincount(exact, minlength=num_classes).tolist(),
        "held_out_per_class": torch.bincount(meta_y, minlength=num_classes).tolist(),
    }}
    clean = None if train.clean_y is None else train.clean_y[keep]
    stage2 = TrainingSet(x=train.x[keep], y=train.y[keep], test_x=train.test_x, test_y=train.test_y,
                         num_classes=num_classes, clean_y=clean)
    kept = replace(bias, indices=bias.indices[keep], labels=bias.labels[keep],
                   clean_labels=bias.clean_labels[keep], is_noisy=bias.is_noisy[keep], report=report)
    return replace(data, train=stage2, bias=kept, meta_x=train.x[chosen], meta_y=meta_y)


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
