"""Reduce per-sample losses with per-sample weights to one scalar (the normalisation mode).

The mode is part of a weighter's artifact: a weighter meta-trained with ``sum``
normalisation must be applied with ``sum`` normalisation.

- ``sum``:          sum(v * l) / sum(v)          (gradient flows through the denominator)
- ``mean``:         mean(v * l)                  (the MW-Net paper's Eq. 1)
- ``detached_sum``: sum(v * l) / sum(v).detach()
A zero weight sum falls back to a denominator of 1 (the reference code's guard).
"""

from __future__ import annotations

import torch


def reduce_weighted(losses: torch.Tensor, weights: torch.Tensor, mode: str) -> torch.Tensor:
    """losses (B,), weights (B,) -> scalar.  Non-finite losses are excluded from the sum.

    If every loss is non-finite the result is NaN, so that a broken batch stays visible
    to NaN checks and to AMP's GradScaler instead of silently producing a zero loss.
    """
    if losses.shape != weights.shape:
        raise ValueError(f"losses {tuple(losses.shape)} and weights {tuple(weights.shape)} differ")
    finite = torch.isfinite(losses)
    if losses.numel() and not bool(finite.any()):
        return losses.sum() * float("nan")
    weights = torch.where(finite, weights, torch.zeros_like(weights))
    weighted = torch.where(finite, weights * losses, torch.zeros_like(losses))
    if mode == "mean":
        return weighted.sum() / max(losses.numel(), 1)
    if mode == "sum":
        denom = weights.sum()
    elif mode == "detached_sum":
        denom = weights.sum().detach()
    else:
        raise ValueError(f"unknown normalization {mode!r}; one of sum, mean, detached_sum")
    denom = torch.where(denom > 0, denom, torch.ones_like(denom))
    return weighted.sum() / denom
