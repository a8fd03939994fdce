"""``fixmatch`` / ``fixmatch-meta``: semi-supervised training (FixMatch, Sohn et al. 2020)
whose confidence mask is pluggable: FixMatch's threshold or a frozen pretrained weighter
(``fixmatch``), or a weighter meta-trained on the way with the labelled batch as meta data
(``fixmatch-meta``, CMW-Net §7.2).

The training set is split, seeded and stratified, into ``labeled_per_class`` labelled
samples per class and the unlabelled rest, whose labels are never read by training (only by
the per-epoch report of pseudo-label accuracy). Every iteration takes a labelled batch of
``schedule.batch_size`` (B) samples and ``mu`` x B unlabelled ones; an epoch is one pass over
the unlabelled part. Views: the weak view is a random translation by up to 12.5% of the
image size (plus a horizontal flip with ``flip``), for the labelled and unlabelled batches;
the strong view of each unlabelled sample is RandAugment + Cutout
(:mod:`weightzoo.training.randaugment`). One forward of the concatenated batch
[labelled weak, unlabelled weak, unlabelled strong] gives

    L = mean_B CE(labelled) + lambda_u * (1 / mu B) sum_i v_i CE(strong_i, pseudo_i),

pseudo_i = argmax of the weak view's prediction (no gradient) and v_i the mask:
``threshold``: 1[max softmax(weak_i) >= threshold] (FixMatch exactly); ``frozen`` /
``meta``: v_i = V(CE(strong_i, pseudo_i), family of pseudo_i), the weight replacing the mask
(always FixMatch's mean over mu B, whatever normalisation a frozen weighter was trained
with). Task families are fitted by k-means on the counts of the pseudo-labels of the
previous epoch's unlabelled batches (the estimate of the unlabelled class distribution; the
labelled counts are equal by construction and say nothing); the first epoch uses the
labelled counts, i.e. one family. Warm-up epochs use the threshold mask and take no meta
steps. ``meta``: a look-ahead meta step on the weighter before each real step (every
``meta.meta_interval`` iterations) through the whole objective above, with the labelled
batch as the meta batch; the real step reuses the look-ahead's forward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from weightzoo import distributed
from weightzoo.bilevel.estimators import AUTO
from weightzoo.bilevel.lookahead import Objective
from weightzoo.losses import per_sample_loss
from weightzoo.methods.base import Batch, RunContext, StepOutput, TrainedArtifact
from weightzoo.methods.bilevel import BilevelMethod, check_estimator
from weightzoo.methods.meta_weighting import MetaConfig
from weightzoo.methods.registry import register_method
from weightzoo.training.randaugment import strong_view
from weightzoo.training.views import crop_flip
from weightzoo.weighting.nets import INPUT_NORMS, CMWNet, WeighterConfig, build_weighter
from weightzoo.weighting.reduction import LossTerm, total_loss
from weightzoo.weighting.sample_weighting import SampleWeighting

if TYPE_CHECKING:
    from weightzoo.training.engine import Schedule, Trainer, TrainingSet
    from weightzoo.weighting.weighted_loss import WeightedLoss

def _labeled_meta() -> MetaConfig:
    return MetaConfig(source="labeled")


@dataclass
class SemiSupervisedConfig:
    """The semi-supervised settings every FixMatch variant of a recipe shares (a ``fixmatch``
    baseline of a ``fixmatch-meta`` recipe inherits them).

    labeled_per_class: labelled samples per class (the rest is used without labels);
    mu: unlabelled samples per labelled one in a batch; lambda_u: weight of the unlabelled
    term; threshold: FixMatch's confidence threshold tau (the mask, and the warm-up's mask
    of the weighter variants); flip: horizontal flips in the weak view (off by default:
    digits are not flip-invariant); randaugment_ops: operations per strong view;
    family_seed: k-means seed of a weighter's families.
    """

    labeled_per_class: int = 4
    mu: int = 7
    lambda_u: float = 1.0
    threshold: float = 0.95
    flip: bool = False
    randaugment_ops: int = 2
    family_seed: int = 0

    def __post_init__(self) -> None:
        if self.labeled_per_class < 1:
            raise ValueError(f"method.labeled_per_class must be >= 1, got {self.labeled_per_class}")
        if self.mu < 1 or self.randaugment_ops < 0 or self.lambda_u < 0:
            raise ValueError("method.mu must be >= 1, randaugment_ops and lambda_u >= 0")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"method.threshold must be in [0, 1], got {self.threshold}")


@dataclass
class FixMatchConfig(SemiSupervisedConfig):
    """The ``[method]`` keys of ``fixmatch``: the semi-supervised settings and the mask's
    weighter: empty for FixMatch's threshold mask, else a pretrained weighter applied frozen
    (zoo name, directory or Hub repo id, at ``revision``)."""

    weighter: str = ""
    revision: str | None = None


@dataclass
class FixMatchMetaConfig(SemiSupervisedConfig):
    """The ``[method]`` keys of ``fixmatch-meta``: the semi-supervised settings and the
    weighter meta-trained as the mask: ``kind`` ``mwnet`` / ``cmwnet`` with
    ``num_families`` heads, ``hidden`` units and loss input ``input_norm``; the
    meta-gradient ``estimator`` and the ``[meta]`` options (meta_lr, meta_interval, ...; the
    meta data is always the labelled batch)."""

    kind: str = "cmwnet"
    num_families: int = 3
    hidden: int = 100
    input_norm: str = "log_classes"
    estimator: str = AUTO
    reuse_forward: bool = True
    meta: MetaConfig = field(default_factory=_labeled_meta)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kind not in ("mwnet", "cmwnet"):
            raise ValueError(f"method.kind must be 'mwnet' or 'cmwnet', got {self.kind!r}")
        if self.kind == "mwnet":
            self.num_families = 1
        if self.num_families < 1 or self.hidden < 1:
            raise ValueError("method.num_families and method.hidden must be >= 1")
        if self.input_norm not in INPUT_NORMS:
            raise ValueError(f"method.input_norm must be one of {INPUT_NORMS}")
        check_estimator(self.estimator)
        self.meta.source = "labeled"  # FixMatch's meta data is its labelled batch

    def validate(self, schedule: Schedule) -> None:
        if schedule.warmup_epochs >= schedule.epochs:
            raise ValueError(f"schedule.warmup_epochs ({schedule.warmup_epochs}) must be less than "
                             f"schedule.epochs ({schedule.epochs}), or the weighter is never meta-trained")


def labeled_split(labels: torch.Tensor, per_class: int, num_classes: int, seed: int) -> torch.Tensor:
    """Seeded, stratified choice of ``per_class`` labelled samples of every class: labels
    (N,) -> sorted indices (per_class * C,). One-line errors for a class with fewer samples."""
    counts = torch.bincount(labels, minlength=num_classes)
    smallest = int(counts.argmin())
    if per_class > int(counts[smallest]):
        raise ValueError(f"labeled_per_class = {per_class} is more than class {smallest} has "
                         f"({int(counts[smallest])} training samples)")
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for cls in range(num_classes):
        members = torch.nonzero(labels == cls).squeeze(1)
        chosen.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    return torch.cat(chosen).sort().values


def threshold_mask(weak_logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """FixMatch's mask (U,): 1 where the weak view's max softmax probability >= threshold."""
    return (torch.softmax(weak_logits.detach().float(), dim=1).amax(1) >= threshold).float()


WeightsOf = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (losses (U,), pseudo (U,)) -> (U,)


def unlabeled_term(weak_logits: torch.Tensor, strong_logits: torch.Tensor,
                   mask: float | WeightsOf, coef: float = 1.0) -> LossTerm:
    """FixMatch's unlabelled term from weak and strong logits (U, C): CE of the strong view
    against the pseudo-label argmax(weak) (no gradient), weighted by the mask and averaged
    over all U samples. mask: a threshold tau (FixMatch) or a function (losses, pseudo-labels)
    -> weights, e.g. ``WeightedLoss.weights`` of a frozen weighter."""
    pseudo = weak_logits.detach().argmax(1)
    losses = per_sample_loss("ce", strong_logits.float(), pseudo)
    weights = threshold_mask(weak_logits, mask) if isinstance(mask, float | int) else mask(losses, pseudo)
    return LossTerm(losses, weights, "mean", coef=coef)


def fixmatch_unlabeled_loss(weak_logits: torch.Tensor, strong_logits: torch.Tensor,
                            mask: float | WeightedLoss = 0.95) -> torch.Tensor:
    """The unlabelled loss of a FixMatch step in user code: (1/U) sum_i v_i CE(strong_i,
    argmax weak_i), v the threshold mask (``mask`` a float tau) or the weights of a
    :class:`~weightzoo.weighting.weighted_loss.WeightedLoss` (a frozen weighter, its families
    fitted on the class counts the user estimates for the unlabelled data)."""
    weights_of = mask if isinstance(mask, float | int) else mask.weights
    return total_loss({"unlabeled": unlabeled_term(weak_logits, strong_logits, weights_of)})


class FixMatch(BilevelMethod):
    """FixMatch with a threshold, frozen or meta-learned mask (see the module docstring):
    ``mask`` is ``meta`` for a :class:`FixMatchMetaConfig`, ``frozen`` for a
    :class:`FixMatchConfig` naming a weighter (or given one), else ``threshold``.

    weighter: the weighter to apply frozen (a ``FixMatchConfig``) or to meta-train (a
    ``FixMatchMetaConfig``) instead of loading / building one from the config;
    labeled: the labelled training indices (L,) of a split the user already has, instead of
    the seeded ``labeled_per_class`` split.
    """

    def __init__(self, config: FixMatchConfig | FixMatchMetaConfig | None = None, *,
                 weighter: CMWNet | None = None, labeled: torch.Tensor | None = None) -> None:
        config = config or FixMatchConfig()
        meta = isinstance(config, FixMatchMetaConfig)
        super().__init__(config if meta else _NO_META)  # type: ignore[arg-type]
        self.settings = config  # the bilevel machinery reads ``config``: no meta steps without meta
        if weighter is None and isinstance(config, FixMatchConfig) and config.weighter:
            weighter = CMWNet.from_pretrained(config.weighter, revision=config.revision)
        self.weighter = weighter
        self.mask = "meta" if meta else "frozen" if weighter is not None else "threshold"
        self.weighting: SampleWeighting | None = None
        self.labeled = None if labeled is None else torch.as_tensor(labeled).long().unique()
        self.unlabeled: torch.Tensor | None = None
        self._pseudo_counts: torch.Tensor | None = None
        self._sums: torch.Tensor | None = None  # per epoch: see _record
        self._truth: torch.Tensor | None = None  # report labels on the device (see _record)

    @property
    def identity(self) -> str:
        return f"fixmatch:{self.mask}"

    def bind(self, run: RunContext) -> None:
        super().bind(run)
        cfg = self.settings
        if isinstance(cfg, FixMatchMetaConfig) and self.weighter is None:
            torch.manual_seed(run.seed)
            self.weighter = build_weighter(WeighterConfig(
                kind=cfg.kind, hidden=cfg.hidden, num_families=cfg.num_families,  # type: ignore[arg-type]
                input_norm=cfg.input_norm, normalization="mean",  # type: ignore[arg-type]
                base_loss="ce", source_num_classes=run.num_classes,
            ))

    def setup(self, trainer: Trainer) -> None:
        data = trainer.data
        if data.x.dim() != 4:
            raise ValueError(f"FixMatch's weak and strong views need images (N, C, H, W); the data "
                             f"has inputs of shape {tuple(data.x.shape[1:])}")
        if self.mask == "meta" and self.weighter is None:
            self.bind(RunContext(data.num_classes, seed=trainer.seed))
        super().setup(trainer)
        if self.labeled is None:
            self.labeled = labeled_split(data.y, self.settings.labeled_per_class, data.num_classes,
                                         trainer.seed)
        elif len(self.labeled) == 0 or self.labeled.min() < 0 or self.labeled.max() >= len(data.y):
            raise ValueError(f"labelled indices must be in [0, {len(data.y)}), at least one")
        is_labeled = torch.zeros(len(data.y), dtype=torch.bool)
        is_labeled[self.labeled] = True
        self.unlabeled = torch.nonzero(~is_labeled).squeeze(1)
        if len(self.unlabeled) == 0:
            raise ValueError("every training sample is labelled: FixMatch needs unlabelled samples "
                             "(lower labeled_per_class)")
        if self.weighter is not None:
            self.weighter.to(trainer.device)
            settings = self.settings
            if isinstance(settings, FixMatchMetaConfig):
                self.weighter.train().requires_grad_(True)
                self.start_learning(self.weighter, settings.meta.meta_lr, settings.meta.meta_weight_decay)
            else:
                self.weighter.eval().requires_grad_(False)
        self._pseudo_counts = torch.bincount(data.y[self.labeled], minlength=data.num_classes).to(
            trainer.device, torch.float64)
        self._truth = report_labels(data).to(trainer.device)

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """Refit the families on last epoch's pseudo-label counts; reset the epoch's sums."""
        super().on_epoch_start(trainer, epoch)
        assert self._pseudo_counts is not None, "setup() was not called"
        if self.weighter is not None:
            counts = distributed.all_reduce_sum(self._pseudo_counts).cpu().numpy()
            self.weighting = SampleWeighting.fit(
                self.weighter, np.rint(counts).astype(np.int64), seed=self.settings.family_seed
            ).to(trainer.device)
        self._pseudo_counts = torch.zeros_like(self._pseudo_counts)
        self._sums = torch.zeros(6, device=trainer.device, dtype=torch.float64)

    def batch_pool(self, trainer: Trainer) -> tuple[torch.Tensor | None, int]:
        assert self.unlabeled is not None, "setup() was not called"
        return self.unlabeled, self.settings.mu * trainer.schedule.batch_size

    def labeled_batch(self, trainer: Trainer, iteration: int) -> torch.Tensor:
        """This rank's shard of iteration ``iteration``'s labelled batch of B indices: drawn
        without replacement within a batch (cycling when B exceeds the labelled set) from a
        generator seeded by the run's seed and the iteration, so resume needs no state."""
        assert self.labeled is not None
        size = trainer.schedule.batch_size
        generator = torch.Generator().manual_seed(trainer.seed * 1_000_003 + 7919 * iteration + 1)
        passes = -(-size // len(self.labeled))
        order = torch.cat([torch.randperm(len(self.labeled), generator=generator) for _ in range(passes)])
        return self.labeled[order[:size]][trainer.rank :: trainer.world]

    def collate(self, trainer: Trainer, index: torch.Tensor, *, epoch: int, iteration: int, lr: float,
                warmup: bool) -> Batch:
        labeled = self.labeled_batch(trainer, iteration)
        data, device = trainer.data, trainer.device
        unlabeled_x = data.x[index].to(device)
        return Batch(
            x=self._weak(data.x[labeled].to(device)), y=data.y[labeled].to(device), index=labeled,
            epoch=epoch, iteration=iteration, lr=lr, warmup=warmup,
            # two independent weak draws: FixMatch's strong pipeline is its own flip/crop + RA
            x_u_weak=self._weak(unlabeled_x),
            x_u_strong=strong_view(self._weak(unlabeled_x), self.settings.randaugment_ops),
            u_index=index,
        )

    def _weak(self, x: torch.Tensor) -> torch.Tensor:
        return crop_flip(x, padding=max(1, round(0.125 * x.shape[-1])), min_size=0, flip=self.settings.flip)

    # ------------------------------------------------------------------------------------
    def objective(self, batch: Batch, *, grad: bool) -> Objective:
        """Logits of [labelled, weak, strong] -> the terms ``labeled`` and ``unlabeled``;
        the unlabelled weights are differentiable w.r.t. the weighter when ``grad``."""
        b = len(batch.y)
        u = len(batch.u_index) if batch.u_index is not None else 0
        mask = "threshold" if batch.warmup else self.mask

        def terms(logits: torch.Tensor) -> dict[str, LossTerm]:
            labeled, weak, strong = logits.float().split([b, u, u])
            if mask == "threshold":
                weights_of: float | WeightsOf = self.settings.threshold
            else:
                assert self.weighting is not None
                weights_of = partial(self.weighting.weights, grad=grad, checked=True)
            return {"labeled": LossTerm(per_sample_loss("ce", labeled, batch.y)),
                    "unlabeled": unlabeled_term(weak, strong, weights_of, self.settings.lambda_u)}

        return terms

    def step(self, trainer: Trainer, batch: Batch) -> StepOutput:
        assert batch.x_u_weak is not None and batch.x_u_strong is not None
        x = torch.cat([batch.x, batch.x_u_weak, batch.x_u_strong])
        kept = None
        if (isinstance(self.settings, FixMatchMetaConfig) and not batch.warmup
                and batch.iteration % self.settings.meta.meta_interval == 0):
            kept = self.learn(trainer, x, batch.lr, self.objective(batch, grad=True),
                              meta_batch=(batch.x, batch.y))
        logits = self.logits(trainer, x, kept)
        terms = self.objective(batch, grad=False)(logits)
        self._record(batch, logits, terms["unlabeled"].weights)
        return StepOutput(terms, logs={"mask_mean": terms["unlabeled"].weights.detach().mean()})

    def _record(self, batch: Batch, logits: torch.Tensor, weights: torch.Tensor) -> None:
        """Accumulate on the device: pseudo-label counts (for the families) and the report's
        sums (correct pseudo-labels, weight of correct and of wrong ones, counts). The true
        labels of the unlabelled samples are read here only, for the report."""
        assert self._sums is not None and self._pseudo_counts is not None and batch.u_index is not None
        assert self._truth is not None
        b, u = len(batch.y), len(batch.u_index)
        pseudo = logits[b : b + u].detach().argmax(1)
        self._pseudo_counts += torch.bincount(pseudo, minlength=len(self._pseudo_counts)).double()
        correct = (pseudo == self._truth[batch.u_index.to(pseudo.device)]).double()
        weights = weights.detach().double()
        self._sums += torch.stack([correct.sum(), (weights * correct).sum(), (weights * (1 - correct)).sum(),
                                   torch.tensor(float(u), device=correct.device, dtype=torch.float64),
                                   (weights >= 0.5).double().sum(), (1 - correct).sum()])

    def epoch_metrics(self) -> dict[str, float]:
        """pseudo_acc: accuracy of the unlabelled batches' pseudo-labels (against labels
        training never reads); weight_correct / weight_wrong: mean weight (mask) of correct
        and of wrong pseudo-labels; used_fraction: share with weight >= 0.5."""
        metrics = super().epoch_metrics()
        if self._sums is None:
            return metrics
        correct, w_correct, w_wrong, seen, used, wrong = distributed.all_reduce_sum(self._sums).tolist()
        if seen:
            metrics.update(pseudo_acc=correct / seen, used_fraction=used / seen)
            metrics["weight_correct"] = w_correct / correct if correct else float("nan")
            metrics["weight_wrong"] = w_wrong / wrong if wrong else float("nan")
        return metrics

    def trained_artifact(self) -> TrainedArtifact | None:
        if self.mask != "meta" or self.weighting is None:
            return None
        return TrainedArtifact(self.weighting.weighter, self.weighting.families)

    def provenance(self) -> dict[str, Any]:
        return {**super().provenance(), "regime": "fixmatch", "mask": self.mask,
                "labeled_per_class": self.settings.labeled_per_class}

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self._pseudo_counts is not None:
            state["pseudo_counts"] = self._pseudo_counts.cpu()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if self._pseudo_counts is not None and "pseudo_counts" in state:
            self._pseudo_counts = state["pseudo_counts"].to(self._pseudo_counts.device)


def report_labels(data: TrainingSet) -> torch.Tensor:
    """The labels the report compares pseudo-labels with: the clean labels when the bias was
    injected, else the labels as given."""
    return data.clean_y if data.clean_y is not None else data.y


@dataclass
class _NoMeta:
    """What ``BilevelMethod`` reads of a config, for the variants that take no meta steps."""

    estimator: str = "exact"
    reuse_forward: bool = False
    meta: MetaConfig = field(default_factory=_labeled_meta)


_NO_META = _NoMeta()

register_method("fixmatch", FixMatchConfig, baseline=True,
                description="FixMatch (semi-supervised); mask: threshold, or a frozen weighter")(FixMatch)
register_method("fixmatch-meta", FixMatchMetaConfig, publishes=True,
                description="FixMatch with a weighter meta-trained as its mask (CMW-Net §7.2)")(FixMatch)
