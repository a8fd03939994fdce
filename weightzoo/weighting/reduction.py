"""Reduce per-sample losses with per-sample weights to one scalar (the normalisation mode).

The mode is part of a weighter's artifact: a weighter meta-trained with ``sum``
normalisation must be applied with ``sum`` normalisation.

- ``sum``:          sum(v * l) / sum(v)          (gradient flows through the denominator)
- ``mean``:         mean(v * l)                  (the MW-Net paper's Eq. 1)
- ``detached_sum``: sum(v * l) / sum(v).detach()
A zero weight sum falls back to a denominator of 1 (the reference code's guard).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def weighted_terms(
    losses: torch.Tensor, weights: torch.Tensor | None, mode: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(numerator, denominator) of the normalised loss; ``weights=None`` is the plain mean.

    Data-parallel training sums both over ranks: the global loss is
    sum(numerators) / sum(denominators), whatever the mode.  Non-finite losses are
    excluded; if every loss is non-finite the numerator is NaN, so that a broken batch
    stays visible to NaN checks and to AMP's GradScaler instead of becoming a zero loss.
    """
    if weights is None:
        weights, mode = torch.ones_like(losses), "mean"
    if losses.shape != weights.shape:
        raise ValueError(f"losses {tuple(losses.shape)} and weights {tuple(weights.shape)} differ")
    finite = torch.isfinite(losses)
    weights = torch.where(finite, weights, torch.zeros_like(weights))
    numerator = torch.where(finite, weights * losses, torch.zeros_like(losses)).sum()
    if losses.numel():  # all non-finite -> NaN, without a host sync
        numerator = torch.where(finite.any(), numerator, torch.full_like(numerator, float("nan")))
    if mode == "mean":
        return numerator, torch.tensor(float(losses.numel()), device=losses.device)
    if mode == "sum":
        return numerator, weights.sum()
    if mode == "detached_sum":
        return numerator, weights.sum().detach()
    raise ValueError(f"unknown normalization {mode!r}; one of sum, mean, detached_sum")


def at_least_fp32(tensor: torch.Tensor) -> torch.Tensor:
    """fp16 / bf16 (autocast) losses in fp32; fp32 and fp64 unchanged."""
    return tensor if tensor.dtype in (torch.float32, torch.float64) else tensor.float()


def safe_divide(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator with the zero-sum guard (a denominator <= 0 counts as 1)."""
    return numerator / torch.where(denominator > 0, denominator, torch.ones_like(denominator))


def reduce_weighted(losses: torch.Tensor, weights: torch.Tensor | None, mode: str) -> torch.Tensor:
    """losses (B,), weights (B,) -> scalar loss normalised by ``mode``."""
    return safe_divide(*weighted_terms(losses, weights, mode))


@dataclass
class LossTerm:
    """A named part of a training objective: per-sample losses (B,), their weights (B,) or
    None for the plain mean, the normalisation mode, and the term's coefficient."""

    losses: torch.Tensor
    weights: torch.Tensor | None = None
    normalization: str = "mean"
    coef: float = 1.0

    def terms(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(numerator, denominator) of this term (see :func:`weighted_terms`)."""
        return weighted_terms(at_least_fp32(self.losses), self.weights, self.normalization)


def total_loss(terms: dict[str, LossTerm]) -> torch.Tensor:
    """Single-process objective: sum over terms of coef * numerator / denominator."""
    if not terms:
        raise ValueError("a training objective needs at least one loss term")
    return sum(term.coef * safe_divide(*term.terms()) for term in terms.values())  # type: ignore[return-value]
