"""Partial labels: candidate-label sets S (N, C) of 0/1 that contain each sample's true label.

Generation follows PRODEN (Lv et al. 2020, ``partialize`` in its reference code):

- ``partial:q``: every wrong label enters a sample's set independently with probability q;
  a set left with the true label alone gets one wrong label drawn uniformly (PRODEN's
  rule, so that no sample is secretly clean). Expected set size
  ``1 + q (C - 1) + (1 - q) ** (C - 1)``.
- ``partial-pair:q``: the label ``(c + 1) mod C`` enters the set of a class-c sample with
  probability q (PRODEN's pair-flip transition). Expected size ``1 + q``.

The label a partial-label data set carries as ``y`` is a seeded uniform draw from each
set: methods that read the sets (``proden``) ignore it, plain methods (``ce``) train on
it -- the naive baseline.
"""

from __future__ import annotations

import numpy as np

PARTIAL_KINDS: tuple[str, ...] = ("partial", "partial-pair")


def candidate_sets(
    labels: np.ndarray, num_classes: int, kind: str, q: float, rng: np.random.Generator
) -> np.ndarray:
    """Candidate sets (N, C) bool for true labels (N,), each containing its label."""
    if num_classes < 2:
        raise ValueError("partial labels need at least 2 classes")
    n = len(labels)
    rows = np.arange(n)
    sets = np.zeros((n, num_classes), dtype=bool)
    if kind == "partial":
        sets = rng.random((n, num_classes)) < q
        sets[rows, labels] = True
        lonely = np.flatnonzero(sets.sum(1) == 1)
        shift = rng.integers(1, num_classes, size=len(lonely))
        sets[lonely, (labels[lonely] + shift) % num_classes] = True
    elif kind == "partial-pair":
        sets[rows, labels] = True
        sets[rows, (labels + 1) % num_classes] = rng.random(n) < q
    else:
        raise ValueError(f"unknown partial-label kind {kind!r}; one of {PARTIAL_KINDS}")
    return sets


def expected_set_size(kind: str, q: float, num_classes: int) -> float:
    """The mean candidate-set size :func:`candidate_sets` produces in expectation."""
    if kind == "partial-pair":
        return 1.0 + q
    return 1.0 + q * (num_classes - 1) + (1.0 - q) ** (num_classes - 1)


def draw_from_sets(sets: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One label (N,) drawn uniformly from each candidate set (N, C)."""
    scores = np.where(sets, rng.random(sets.shape), -1.0)
    return scores.argmax(1).astype(np.int64)


def check_candidates(
    sets: np.ndarray, num_classes: int, labels: np.ndarray | None = None, where: str = "S"
) -> np.ndarray:
    """Validate candidate sets (N, C') of 0/1 and return them as (N, num_classes) bool.

    Raises on values other than 0/1, columns beyond ``num_classes`` holding a candidate (a
    class the model cannot output), empty sets, and sets missing their known label (N,).
    """
    if sets.ndim != 2:
        raise ValueError(f"{where} must be 2-D (samples, classes), got shape {sets.shape}")
    if not np.isin(sets, (0, 1)).all():
        raise ValueError(f"{where} must hold only 0 and 1")
    sets = sets.astype(bool)
    if sets.shape[1] > num_classes and sets[:, num_classes:].any():
        row = int(np.flatnonzero(sets[:, num_classes:].any(1))[0])
        raise ValueError(f"{where}: row {row} holds a candidate class >= {num_classes}, which the "
                         "model cannot output")
    sets = np.pad(sets[:, :num_classes], ((0, 0), (0, max(0, num_classes - sets.shape[1]))))
    empty = np.flatnonzero(~sets.any(1))
    if empty.size:
        raise ValueError(f"{where}: {empty.size} empty candidate sets (first: row {int(empty[0])})")
    if labels is not None:
        missing = np.flatnonzero(~sets[np.arange(len(labels)), labels])
        if missing.size:
            raise ValueError(f"{where}: {missing.size} candidate sets miss their true label "
                             f"(first: row {int(missing[0])}, label {int(labels[missing[0]])})")
    return sets


def set_report(sets: np.ndarray) -> dict[str, float]:
    """Realised mean, min and max candidate-set size of sets (N, C)."""
    sizes = sets.sum(1)
    return {"mean_set_size": float(sizes.mean()) if len(sizes) else 0.0,
            "min_set_size": int(sizes.min()) if len(sizes) else 0,
            "max_set_size": int(sizes.max()) if len(sizes) else 0}
