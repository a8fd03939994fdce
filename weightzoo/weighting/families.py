"""Task families: k-means over per-class sample counts (CMW-Net §3.4.1, Algorithm 3).

Family 0 holds the smallest classes, family K-1 the largest: cluster centres are
sorted ascending, so family ids mean the same thing on every dataset.

Degenerate inputs (documented behaviour):
- classes with zero samples take no part in the fit and are put in family 0 (smallest);
- with d < K distinct non-zero counts, every distinct count is its own cluster and the
  d clusters are spread over the K heads by rank (smallest -> 0, largest -> K-1);
- with a single distinct count (balanced data, or one class) every class goes to the
  middle family K // 2; unused families have centre ``None``;
- k-means always returns K clusters, even when class sizes differ by sampling or
  symmetric label noise only, and the heads are then applied to classes at random. So
  when the largest non-empty class is less than ``BALANCED_RATIO`` (1.5) times the
  smallest, the sizes count as equal: every class goes to the middle family K // 2, as
  for exactly equal counts (the head meta-trained on mid-sized classes, neither the
  head nor the tail). A 1.5x spread is far beyond sampling noise (a few percent at
  100+ samples per class) and below any long tail the papers study (imbalance >= 10)
  or the count shifts asymmetric noise causes (40% of a class moved: 0.6x vs 1.4x).
  ``reason`` says which rule decided.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

BALANCED_RATIO = 1.5


@dataclass(frozen=True)
class TaskFamilies:
    """class -> task family map.

    centers: K sorted cluster centres (``None`` for a family no class falls into).
    family_of_class: (C,) long tensor.
    class_counts: the per-class counts the families were fitted on.
    reason: which rule assigned the families (k-means, equal sizes, few distinct counts).
    """

    centers: tuple[float | None, ...]
    family_of_class: torch.Tensor
    class_counts: tuple[int, ...]
    reason: str = ""

    @property
    def num_families(self) -> int:
        return len(self.centers)

    @property
    def num_classes(self) -> int:
        return int(self.family_of_class.numel())

    @classmethod
    def fit(
        cls, class_counts: Sequence[int] | np.ndarray | torch.Tensor, num_families: int = 3,
        seed: int = 0, n_init: int = 10,
    ) -> TaskFamilies:
        """Fit K families on per-class counts (C,) with 1-D k-means."""
        counts = np.asarray(
            class_counts.cpu() if isinstance(class_counts, torch.Tensor) else class_counts
        ).astype(np.int64).reshape(-1)
        if counts.size == 0:
            raise ValueError("class_counts is empty: need at least one class")
        if (counts < 0).any():
            raise ValueError("class_counts must be non-negative")
        if num_families < 1:
            raise ValueError("num_families must be >= 1")
        family = np.zeros(counts.size, dtype=np.int64)
        centers: list[float | None] = [None] * num_families
        present = counts > 0
        distinct = np.unique(counts[present])
        reason = "k-means on the class counts" if num_families > 1 else "a single family"
        if distinct.size == 0:
            reason = "no samples: every class in family 0"
        elif num_families > 1 and distinct.max() < BALANCED_RATIO * distinct.min():
            family[present] = num_families // 2
            centers[num_families // 2] = float(counts[present].mean())
            reason = (f"equal sizes: largest / smallest class = {distinct.max() / distinct.min():.2f} "
                      f"< {BALANCED_RATIO}, every class in the middle family {num_families // 2}")
        elif distinct.size < num_families:
            reason = f"{distinct.size} distinct counts < {num_families} families: one family each"
            heads = np.rint(np.arange(distinct.size) * (num_families - 1) / (distinct.size - 1))
            for value, head in zip(distinct, heads.astype(np.int64), strict=True):
                family[counts == value] = head
                centers[head] = float(value)
        else:
            from sklearn.cluster import KMeans

            km = KMeans(n_clusters=num_families, n_init=n_init, random_state=seed)
            labels = km.fit_predict(counts[present].reshape(-1, 1).astype(np.float64))
            raw_centers = km.cluster_centers_.reshape(-1)
            order = np.argsort(raw_centers, kind="stable")  # rank -> raw id
            rank_of_raw = np.empty_like(order)
            rank_of_raw[order] = np.arange(num_families)
            family[present] = rank_of_raw[labels]
            centers = [float(c) for c in raw_centers[order]]
        return cls(tuple(centers), torch.from_numpy(family), tuple(int(c) for c in counts), reason)

    @classmethod
    def from_labels(
        cls, labels: Sequence[int] | np.ndarray | torch.Tensor, num_classes: int,
        num_families: int = 3, seed: int = 0,
    ) -> TaskFamilies:
        """Fit on the counts of integer labels (N,) in [0, num_classes)."""
        return cls.fit(class_counts(labels, num_classes), num_families, seed)

    def __call__(self, classes: torch.Tensor) -> torch.Tensor:
        """Family of each class index: (B,) long -> (B,) long, on the input's device."""
        table = self.family_of_class.to(classes.device)
        return table[classes.long()]

    def to(self, device: torch.device | str) -> TaskFamilies:
        return TaskFamilies(self.centers, self.family_of_class.to(device), self.class_counts, self.reason)

    def to_dict(self) -> dict:
        return {
            "centers": list(self.centers),
            "family_of_class": self.family_of_class.cpu().tolist(),
            "class_counts": list(self.class_counts),
            "reason": self.reason,
        }


def integer_labels(labels: Sequence[int] | np.ndarray | torch.Tensor) -> np.ndarray:
    """Labels (N,) as int64, refusing strings, NaN / inf, fractions and negatives with the
    offending value in the message."""
    arr = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels).reshape(-1)
    if arr.size == 0 or np.issubdtype(arr.dtype, np.integer):
        bad = np.flatnonzero(arr < 0) if arr.size else arr
    elif arr.dtype.kind in "fb":
        bad = np.flatnonzero(~np.isfinite(arr) | (np.mod(arr, 1) != 0) | (arr < 0))
    else:
        raise ValueError(f"labels must be integers, got {arr.dtype} values such as {_plain(arr[0])!r}")
    if bad.size:
        first = int(bad[0])
        raise ValueError(f"labels must be integers >= 0, got {_plain(arr[first])!r} at position {first}")
    return arr.astype(np.int64)


def _plain(value: object) -> object:
    """A numpy scalar as the Python value it holds (for readable messages)."""
    return value.item() if isinstance(value, np.generic) else value


def class_counts(labels: Sequence[int] | np.ndarray | torch.Tensor, num_classes: int) -> np.ndarray:
    """Per-class counts (C,) of integer labels; raises on labels outside [0, num_classes)."""
    arr = integer_labels(labels)
    if arr.size and arr.max() >= num_classes:
        raise ValueError(f"label {int(arr.max())} is out of range for {num_classes} classes")
    return np.bincount(arr, minlength=num_classes)
