"""Seeded bias injection: long-tail subsampling and label noise (CMW-Net §4.1-4.3).

A bias spec is ``none`` or stages joined by ``+``, e.g. ``longtail:50+symmetric:0.2``.
Long-tail subsampling always runs first (on the clean labels), then the noise stages in
the order given; each noise stage acts on every kept sample's *current* label, so a later
stage is overlaid on an earlier one (CMW-Net Table V).  A sample is noisy when its final
label differs from its clean label.  A partial-label stage (``partial:q``,
``partial-pair:q``; :mod:`weightzoo.data.partial`) gives every sample a candidate set
instead, and composes with long-tail only.

- ``symmetric:p``: with probability p the label moves to a *different* class drawn
  uniformly, so the realised rate is about p.
- ``asymmetric:p``: with probability p the label c moves to ``class_map[c]``.  The map is
  the explicit ``class_map`` if given, else a known one for the dataset (MNIST-style digits:
  2->7, 3->8, 5<->6, 7->1 (Patrini et al. 2017); Fashion-MNIST: T-shirt<->Shirt,
  Pullover->Coat, Sandal->Sneaker; CIFAR-10: truck->automobile, bird->airplane,
  deer->horse, cat<->dog; CIFAR-100: the next class within its superclass); any other
  dataset needs an explicit ``class_map`` (``pairflip:p`` is the cyclic c -> c+1 map).
  Classes absent from the map are never flipped, so the realised rate is p times the
  fraction of samples in mapped classes.
- ``pairflip:p``: c -> (c+1) mod C with probability p, for every class.
- ``instance:p``: feature-dependent noise in the spirit of PMD (Zhang et al. 2021).  A
  logistic regression (L2, C = 0.1, 100 iterations) fitted on the flattened, standardised
  inputs and the clean labels (at most 10k samples) gives posteriors; sample i flips with
  probability ``min(1, s * (1 - (p_top - p_second)))``, s chosen so that the mean is p,
  to the most likely class under the posterior other than its current label.
- ``longtail:rho``: keep ``floor(n_max * rho ** (-c / (C - 1)))`` samples of class c
  (at least 1), class 0 the largest, drawn without replacement; ``n_max`` is the size of
  the smallest class so that every target is reachable.  ``rho = 1`` keeps all.

Every draw comes from generators seeded by ``seed`` alone, never from global RNG state.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from weightzoo.data.partial import PARTIAL_KINDS, candidate_sets, draw_from_sets, set_report

NOISE_KINDS: tuple[str, ...] = ("symmetric", "asymmetric", "pairflip", "instance")
BIAS_KINDS: tuple[str, ...] = ("longtail", *NOISE_KINDS, *PARTIAL_KINDS)
INSTANCE_FIT_MAX = 10_000

_MNIST_MAP = {2: 7, 3: 8, 5: 6, 6: 5, 7: 1}
_FASHION_MNIST_MAP = {0: 6, 6: 0, 2: 4, 5: 7}
_CIFAR10_MAP = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}
# CIFAR-100 fine label -> superclass (the dataset's coarse labels).
_CIFAR100_COARSE = (
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
)


def _cifar100_map() -> dict[int, int]:
    """Each fine class -> the next fine class (cyclically) within its superclass."""
    mapping: dict[int, int] = {}
    for coarse in range(20):
        members = [c for c, k in enumerate(_CIFAR100_COARSE) if k == coarse]
        mapping.update({c: members[(i + 1) % len(members)] for i, c in enumerate(members)})
    return mapping


DEFAULT_CLASS_MAPS: dict[str, tuple[int, dict[int, int]]] = {
    "digits": (10, _MNIST_MAP),
    "mnist": (10, _MNIST_MAP),
    "mnist5k": (10, _MNIST_MAP),
    "fashion-mnist": (10, _FASHION_MNIST_MAP),
    "cifar10": (10, _CIFAR10_MAP),
    "cifar100": (100, _cifar100_map()),
}


def _format_value(value: float) -> str:
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


@dataclass(frozen=True)
class BiasStage:
    """One stage: a kind from ``BIAS_KINDS`` and its rate p (noise) or factor rho (longtail)."""

    kind: str
    value: float

    def __post_init__(self) -> None:
        if self.kind not in BIAS_KINDS:
            raise ValueError(f"unknown bias kind {self.kind!r}; known: none, {', '.join(BIAS_KINDS)}")
        if not math.isfinite(self.value):
            raise ValueError(f"{self.kind} needs a finite value, got {self.value}")
        if self.kind == "longtail" and self.value < 1:
            raise ValueError(f"longtail imbalance factor must be >= 1, got {self.value}")
        if self.kind != "longtail" and not 0.0 <= self.value <= 1.0:
            what = "noise rate" if self.kind in NOISE_KINDS else "candidate probability q"
            raise ValueError(f"{self.kind} {what} must be in [0, 1], got {self.value}")

    def __str__(self) -> str:
        return f"{self.kind}:{_format_value(self.value)}"


@dataclass
class BiasSpec:
    """An ordered list of bias stages (long-tail first), plus an optional asymmetric map.

    ``str(spec)`` gives the stage string that ``BiasSpec.parse`` reads back; the class map
    is not part of it.
    """

    stages: tuple[BiasStage, ...] = ()
    class_map: dict[int, int] | None = None

    def __post_init__(self) -> None:
        longtail = [s for s in self.stages if s.kind == "longtail"]
        if len(longtail) > 1:
            raise ValueError("a bias spec may contain at most one longtail stage")
        partial = [s for s in self.stages if s.kind in PARTIAL_KINDS]
        if len(partial) > 1 or (partial and len(partial) + len(longtail) < len(self.stages)):
            raise ValueError("a partial-label stage combines with longtail only (one partial stage, "
                             "no label noise)")
        self.stages = tuple(longtail) + tuple(s for s in self.stages if s.kind != "longtail")

    @classmethod
    def parse(cls, text: str, class_map: dict[int, int] | None = None) -> BiasSpec:
        """Parse ``none`` or ``kind:value[+kind:value...]`` (kinds: ``BIAS_KINDS``)."""
        text = text.strip().lower()
        if text in ("", "none"):
            return cls((), class_map)
        stages = []
        for part in text.split("+"):
            kind, sep, value = part.strip().partition(":")
            if kind == "none":
                raise ValueError(f"'none' cannot be combined with other stages in {text!r}")
            if not sep or not value:
                raise ValueError(f"bias stage {part!r} needs a value, e.g. symmetric:0.4")
            try:
                number = float(value)
            except ValueError:
                raise ValueError(f"bias stage {part!r}: {value!r} is not a number") from None
            stages.append(BiasStage(kind, number))
        return cls(tuple(stages), class_map)

    @property
    def longtail(self) -> float | None:
        """The imbalance factor rho, or None without a longtail stage."""
        return next((s.value for s in self.stages if s.kind == "longtail"), None)

    @property
    def noise_stages(self) -> tuple[BiasStage, ...]:
        return tuple(s for s in self.stages if s.kind in NOISE_KINDS)

    @property
    def partial(self) -> BiasStage | None:
        """The partial-label stage, if any."""
        return next((s for s in self.stages if s.kind in PARTIAL_KINDS), None)

    def __str__(self) -> str:
        return "+".join(str(s) for s in self.stages) or "none"


@dataclass
class BiasedData:
    """The biased training set, as indices into the original one.

    indices: (n,) long, kept samples (after long-tail subsampling), ascending.
    labels: (n,) long, the possibly noisy labels of the kept samples.
    clean_labels: (n,) long, their true labels.
    is_noisy: (n,) bool, ``labels != clean_labels``.
    report: JSON-able summary (spec, seed, realised rates and counts).
    candidates: (n, C) bool candidate sets of a partial-label stage (``labels`` is then a
        uniform draw from each set), else None.
    """

    indices: Tensor
    labels: Tensor
    clean_labels: Tensor
    is_noisy: Tensor
    report: dict[str, Any]
    candidates: Tensor | None = None


def inject_bias(
    x: Tensor, y: Tensor, num_classes: int, spec: BiasSpec | str, seed: int,
    class_map: dict[int, int] | None = None, dataset: str | None = None,
) -> BiasedData:
    """Apply ``spec`` to a clean training set x (N, ...), y (N,) with a fixed seed.

    class_map: explicit asymmetric map (overrides ``spec.class_map``).
    dataset: dataset name choosing the default asymmetric map (``DEFAULT_CLASS_MAPS``).
    """
    spec = BiasSpec.parse(spec) if isinstance(spec, str) else spec
    y_np = y.detach().cpu().numpy()
    if y_np.ndim != 1 or len(x) != len(y_np):
        raise ValueError(f"need x (N, ...) and y (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
    if y_np.size and (y_np.min() < 0 or y_np.max() >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes}), got [{y_np.min()}, {y_np.max()}]")
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(len(spec.stages))]
    indices = np.arange(len(y_np))
    if spec.longtail is not None:
        indices = longtail_indices(y_np, num_classes, spec.longtail, rngs.pop(0))
    partial_rng = rngs.pop() if spec.partial is not None else None
    clean = y_np[indices]
    labels = clean.copy()
    used_map = None
    stage_reports = []
    for stage, rng in zip(spec.noise_stages, rngs, strict=True):
        if stage.kind == "symmetric":
            new = _symmetric(labels, num_classes, stage.value, rng)
        elif stage.kind == "instance":
            kept_x = x[torch.from_numpy(indices)]
            posterior = reference_posterior(kept_x, clean, num_classes, seed).numpy()
            new = _instance(labels, posterior, stage.value, rng)
        else:
            if stage.kind == "pairflip":
                mapping = {c: (c + 1) % num_classes for c in range(num_classes)}
            else:
                used_map = mapping = _asymmetric_map(
                    num_classes, class_map if class_map is not None else spec.class_map, dataset
                )
            new = _mapped(labels, num_classes, mapping, stage.value, rng)
        stage_reports.append({"stage": str(stage), "changed": int((new != labels).sum())})
        labels = new
    sets = None
    if spec.partial is not None and partial_rng is not None:
        sets = candidate_sets(clean, num_classes, spec.partial.kind, spec.partial.value, partial_rng)
        labels = draw_from_sets(sets, partial_rng)
        stage_reports.append({"stage": str(spec.partial), **set_report(sets)})
    is_noisy = labels != clean
    report = _report(spec, seed, dataset, used_map, len(y_np), clean, labels, num_classes)
    report["stages"] = stage_reports
    return BiasedData(
        indices=torch.from_numpy(indices.astype(np.int64)),
        labels=torch.from_numpy(labels.astype(np.int64)),
        clean_labels=torch.from_numpy(clean.astype(np.int64)),
        is_noisy=torch.from_numpy(is_noisy),
        report=report,
        candidates=None if sets is None else torch.from_numpy(sets),
    )


def longtail_counts(num_classes: int, n_max: int, rho: float) -> np.ndarray:
    """Exponential profile (C,): ``max(1, floor(n_max * rho ** (-c / (C - 1))))``."""
    if num_classes == 1:
        return np.array([n_max], dtype=np.int64)
    c = np.arange(num_classes)
    return np.maximum(1, np.floor(n_max * rho ** (-c / (num_classes - 1)) + 1e-9)).astype(np.int64)


def longtail_indices(
    y: np.ndarray, num_classes: int, rho: float, rng: np.random.Generator
) -> np.ndarray:
    """Sorted indices of a long-tail subsample of labels y (N,) following ``longtail_counts``."""
    counts = np.bincount(y, minlength=num_classes)
    if counts.min() == 0:
        empty = np.flatnonzero(counts == 0).tolist()
        raise ValueError(f"longtail needs every class present; classes {empty} have no samples")
    targets = longtail_counts(num_classes, int(counts.min()), rho)
    kept = [rng.choice(np.flatnonzero(y == c), size=int(targets[c]), replace=False)
            for c in range(num_classes)]
    return np.sort(np.concatenate(kept))


def reference_posterior(x: Tensor, y: np.ndarray, num_classes: int, seed: int) -> Tensor:
    """Posteriors (N, C) of a logistic regression on flattened, standardised x (N, ...).

    Fitted on at most ``INSTANCE_FIT_MAX`` samples (seeded subsample) with labels y (N,).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(y)) < 2:
        raise ValueError("instance noise needs at least two classes in the data")
    feats = x.detach().cpu().reshape(len(x), -1).double().numpy()
    std = feats.std(axis=0)
    feats = (feats - feats.mean(axis=0)) / np.where(std > 1e-8, std, 1.0)
    rng = np.random.default_rng(seed)
    fit = np.sort(rng.choice(len(y), size=min(len(y), INSTANCE_FIT_MAX), replace=False))
    model = LogisticRegression(max_iter=100, C=0.1, random_state=seed)
    with warnings.catch_warnings():
        # A not fully converged fit is still a valid posterior for generating noise.
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(feats[fit], y[fit])
    posterior = np.zeros((len(y), num_classes))
    posterior[:, model.classes_] = model.predict_proba(feats)
    return torch.from_numpy(posterior)


def instance_flip_probabilities(posterior: np.ndarray, rate: float) -> np.ndarray:
    """Flip probabilities (N,) proportional to ``1 - margin`` with mean ``rate``.

    margin = p_top - p_second of each posterior row (N, C); probabilities are clipped to
    [0, 1] and the scale is found by bisection so that the clipped mean equals ``rate``.
    """
    top2 = np.sort(posterior, axis=1)[:, -2:]
    score = 1.0 - (top2[:, 1] - top2[:, 0]) + 1e-12
    lo, hi = 0.0, 1.0 / score.min()
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if np.clip(mid * score, 0, 1).mean() < rate else (lo, mid)
    return np.clip(hi * score, 0.0, 1.0)


def _instance(
    labels: np.ndarray, posterior: np.ndarray, rate: float, rng: np.random.Generator
) -> np.ndarray:
    flip = rng.random(len(labels)) < instance_flip_probabilities(posterior, rate)
    others = posterior.copy()
    others[np.arange(len(labels)), labels] = -np.inf
    return np.where(flip, others.argmax(axis=1), labels)


def _symmetric(
    labels: np.ndarray, num_classes: int, rate: float, rng: np.random.Generator
) -> np.ndarray:
    if num_classes < 2:
        raise ValueError("symmetric noise needs at least 2 classes")
    flip = rng.random(len(labels)) < rate
    shift = rng.integers(1, num_classes, size=len(labels))
    return np.where(flip, (labels + shift) % num_classes, labels)


def _mapped(
    labels: np.ndarray, num_classes: int, mapping: dict[int, int], rate: float,
    rng: np.random.Generator,
) -> np.ndarray:
    target = np.arange(num_classes)
    target[list(mapping)] = list(mapping.values())
    flip = rng.random(len(labels)) < rate
    return np.where(flip, target[labels], labels)


def _asymmetric_map(
    num_classes: int, class_map: dict[int, int] | None, dataset: str | None
) -> dict[int, int]:
    if class_map is not None:
        bad = [(k, v) for k, v in class_map.items()
               if not (0 <= k < num_classes and 0 <= v < num_classes)]
        if bad:
            raise ValueError(f"class_map entries {bad} are outside [0, {num_classes})")
        return {int(k): int(v) for k, v in class_map.items()}
    if dataset in DEFAULT_CLASS_MAPS:
        expected, mapping = DEFAULT_CLASS_MAPS[dataset]
        if expected != num_classes:
            raise ValueError(
                f"the default {dataset} class map needs {expected} classes, got {num_classes}; "
                "pass class_map"
            )
        return dict(mapping)
    raise ValueError(
        f"asymmetric noise needs a class map for dataset {dataset or 'of unknown origin'!r} "
        f"(known maps: {', '.join(DEFAULT_CLASS_MAPS)}): give [data] class_map, or use "
        "pairflip:p for the cyclic map c -> c+1"
    )


def _report(
    spec: BiasSpec, seed: int, dataset: str | None, class_map: dict[int, int] | None,
    n_input: int, clean: np.ndarray, labels: np.ndarray, num_classes: int,
) -> dict[str, Any]:
    clean_counts = np.bincount(clean, minlength=num_classes)
    noisy = labels != clean
    flipped = np.bincount(clean[noisy], minlength=num_classes)
    present = clean_counts[clean_counts > 0]
    return {
        "spec": str(spec),
        "seed": seed,
        "dataset": dataset,
        "class_map": {str(k): v for k, v in class_map.items()} if class_map else None,
        "n_input": n_input,
        "n_kept": len(clean),
        "noise_rate": float(noisy.mean()) if len(clean) else 0.0,
        "noise_rate_per_class": [
            float(f / n) if n else None for f, n in zip(flipped, clean_counts, strict=True)
        ],
        "clean_class_counts": clean_counts.tolist(),
        "noisy_class_counts": np.bincount(labels, minlength=num_classes).tolist(),
        "imbalance_factor": float(present.max() / present.min()) if len(present) else 1.0,
    }
