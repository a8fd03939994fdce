"""Per-sample base losses and robust-loss baselines, all ``(logits[B, C], targets) -> (B,)``.

Targets are hard labels ``(B,)`` (integer) or soft label distributions ``(B, C)`` (float,
e.g. mixup or pseudo labels).  A soft target enters every loss linearly,
``L(t) = sum_k t_k L(e_k)``, except SCE whose reverse term is defined on the label
distribution itself (Wang et al. 2019).

- ``ce``:             cross entropy.
- ``focal``:          -(1 - p_y)^gamma log p_y (Lin et al. 2017), ``gamma=2``.
- ``gce``:            (1 - p_y^q) / q (Zhang & Sabuncu 2018), ``q=0.7``; CE as q -> 0, MAE at q = 1.
- ``sce``:            alpha CE + beta RCE, RCE = -sum_k p_k log t_k with log 0 := A
                      (Wang et al. 2019), ``alpha=0.1, beta=1.0, log_zero=-4``.
- ``class-balanced``: w_y CE with w_c = (1 - beta) / (1 - beta^n_c) normalised to sum C
                      (Cui et al. 2019), ``beta=0.9999``; needs ``class_counts``.
- ``poly-soft``:      polynomial soft weighting of CE (Zhao et al. 2015):
                      ((d-1) lam / d) [1 - (1 - CE / lam)^(d / (d-1))] for CE < lam, else
                      (d-1) lam / d; ``lam=5, d=3`` (lam > 0, d > 1); bounded by (d-1) lam / d.
- ``bi-tempered``:    bi-tempered logistic loss (Amid et al. 2019) with the tempered softmax
                      of temperature ``t2`` >= 1 (heavy tail; normalised by fixed-point
                      iteration) and the tempered log of ``t1`` in [0, 1) (bounded);
                      ``t1=0.8, t2=1.2``; CE at t1 = t2 = 1.
Hyper-parameters may be tensors (meta-learned, see ``weightzoo.methods.robust_loss``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

LOSS_NAMES: tuple[str, ...] = ("ce", "focal", "gce", "sce", "class-balanced", "poly-soft", "bi-tempered")


def soft_cross_entropy(logits: torch.Tensor, soft_targets: torch.Tensor) -> torch.Tensor:
    """-sum_k t_k log softmax(z)_k: logits (B, C), soft_targets (B, C) -> (B,)."""
    _check_soft(logits, soft_targets)
    return -(soft_targets * F.log_softmax(logits, dim=1)).sum(dim=1)


def class_balanced_weights(
    class_counts: Sequence[int] | torch.Tensor, beta: float = 0.9999
) -> torch.Tensor:
    """Cui et al. (2019) weights (C,): (1 - beta) / (1 - beta^n_c), normalised to sum C.

    An empty class (n_c = 0) is treated as having one sample, so its weight stays finite.
    """
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"class-balanced beta must be in [0, 1), got {beta}")
    counts = torch.as_tensor(class_counts, dtype=torch.float64).reshape(-1)
    if counts.numel() == 0 or bool((counts < 0).any()):
        raise ValueError("class_counts must be a non-empty sequence of non-negative counts")
    weights = (1.0 - beta) / (1.0 - beta ** counts.clamp(min=1.0))
    return weights / weights.sum() * counts.numel()


def per_sample_loss(
    name: str,
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    class_counts: Sequence[int] | torch.Tensor | None = None,
    **params: Any,
) -> torch.Tensor:
    """Loss ``name`` per sample: logits (B, C), targets (B,) long or (B, C) soft -> (B,).

    ``params`` are the loss's hyper-parameters (``gamma``, ``q``, ``alpha``/``beta``/
    ``log_zero``, ``beta``); ``class_counts`` (C,) is needed by ``class-balanced`` only.
    """
    if name not in _LOSSES:
        raise ValueError(f"unknown loss {name!r}; known losses: {', '.join(LOSS_NAMES)}")
    if logits.dim() != 2:
        raise ValueError(f"logits must be (batch, classes), got shape {tuple(logits.shape)}")
    if name == "class-balanced":
        if class_counts is None:
            raise ValueError("the class-balanced loss needs class_counts=(C,) per-class counts")
        params["class_counts"] = class_counts
    elif class_counts is not None:
        raise ValueError(f"loss {name!r} does not use class_counts")
    try:
        return _LOSSES[name](logits, targets, **params)
    except TypeError as err:
        raise TypeError(f"bad hyper-parameters for loss {name!r}: {err}") from None


def _check_soft(logits: torch.Tensor, soft_targets: torch.Tensor) -> None:
    if soft_targets.shape != logits.shape or not soft_targets.is_floating_point():
        raise ValueError(
            f"soft targets must be float with the logits' shape {tuple(logits.shape)}, "
            f"got {soft_targets.dtype} {tuple(soft_targets.shape)}"
        )


def _as_distribution(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Hard labels (B,) -> one-hot (B, C) in the logits' dtype; soft targets are checked."""
    if targets.dim() == 1 and not targets.is_floating_point():
        _check_hard(logits, targets)
        return F.one_hot(targets.long(), logits.shape[1]).to(logits.dtype)
    _check_soft(logits, targets)
    return targets


def _check_hard(logits: torch.Tensor, targets: torch.Tensor) -> None:
    if targets.shape[0] != logits.shape[0]:
        raise ValueError(f"{targets.shape[0]} targets for {logits.shape[0]} logits")
    if bool(((targets < 0) | (targets >= logits.shape[1])).any()):  # one host sync
        raise ValueError(f"target labels must be in [0, {logits.shape[1]})")


def _ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if targets.dim() == 1 and not targets.is_floating_point():
        _check_hard(logits, targets)
        return F.cross_entropy(logits, targets.long(), reduction="none")
    return soft_cross_entropy(logits, targets)


def _focal(logits: torch.Tensor, targets: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    if gamma < 0:
        raise ValueError(f"focal gamma must be >= 0, got {gamma}")
    t = _as_distribution(logits, targets)
    log_p = F.log_softmax(logits, dim=1)
    return -(t * (1.0 - log_p.exp()).pow(gamma) * log_p).sum(dim=1)


Scalar = float | torch.Tensor


def _num(value: Scalar) -> float:
    """A hyper-parameter's value for range checks (a learned one may carry a graph)."""
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)


def _gce(logits: torch.Tensor, targets: torch.Tensor, q: Scalar = 0.7) -> torch.Tensor:
    if not 0.0 < _num(q) <= 1.0:
        raise ValueError(f"GCE q must be in (0, 1], got {_num(q)}")
    t = _as_distribution(logits, targets)
    p_q = torch.exp(q * F.log_softmax(logits, dim=1))
    return (t * (1.0 - p_q) / q).sum(dim=1)


def _sce(
    logits: torch.Tensor, targets: torch.Tensor, alpha: Scalar = 0.1, beta: Scalar = 1.0,
    log_zero: float = -4.0,
) -> torch.Tensor:
    t = _as_distribution(logits, targets)
    log_p = F.log_softmax(logits, dim=1)
    ce = -(t * log_p).sum(dim=1)
    rce = -(log_p.exp() * torch.log(t).clamp(min=log_zero)).sum(dim=1)
    return alpha * ce + beta * rce


def class_weighted_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, class_weights: torch.Tensor
) -> torch.Tensor:
    """-sum_k t_k w_k log softmax(z)_k: logits (B, C), targets (B,) or soft (B, C), class
    weights (C,) -> (B,) (the class-balanced loss, given its weights)."""
    if class_weights.numel() != logits.shape[1]:
        raise ValueError(f"{class_weights.numel()} class weights for {logits.shape[1]} classes")
    t = _as_distribution(logits, targets)
    return -(t * class_weights.to(logits) * F.log_softmax(logits, dim=1)).sum(dim=1)


def _class_balanced(
    logits: torch.Tensor, targets: torch.Tensor,
    class_counts: Sequence[int] | torch.Tensor, beta: float = 0.9999,
) -> torch.Tensor:
    weights = class_balanced_weights(class_counts, beta)
    if weights.numel() != logits.shape[1]:
        raise ValueError(f"{weights.numel()} class counts for {logits.shape[1]} classes")
    return class_weighted_cross_entropy(logits, targets, weights)


def _poly_soft(
    logits: torch.Tensor, targets: torch.Tensor, lam: Scalar = 5.0, d: Scalar = 3.0
) -> torch.Tensor:
    if _num(lam) <= 0 or _num(d) <= 1:
        raise ValueError(f"poly-soft needs lam > 0 and d > 1, got lam={_num(lam)}, d={_num(d)}")
    ce = _ce(logits, targets)
    cap = (d - 1.0) / d * lam
    inside = torch.clamp(1.0 - ce / lam, min=0.0)  # CE >= lam: the loss is the constant cap
    return cap * (1.0 - inside ** (d / (d - 1.0)))


def _log_t(u: torch.Tensor, t: Scalar) -> torch.Tensor:
    """Tempered logarithm (u^(1-t) - 1) / (1 - t); ln u at t = 1."""
    if _num(t) == 1.0:
        return torch.log(u)
    return (u ** (1.0 - t) - 1.0) / (1.0 - t)


def _exp_t(u: torch.Tensor, t: Scalar) -> torch.Tensor:
    """Tempered exponential [1 + (1 - t) u]_+^(1 / (1 - t)); exp u at t = 1."""
    if _num(t) == 1.0:
        return torch.exp(u)
    return torch.clamp(1.0 + (1.0 - t) * u, min=0.0) ** (1.0 / (1.0 - t))


def tempered_softmax(logits: torch.Tensor, t: Scalar, iterations: int = 10) -> torch.Tensor:
    """exp_t(z - lambda(z)) with lambda such that each row sums to 1 (t >= 1; the fixed-point
    normalisation of Amid et al. 2019, differentiable through the iterations): (B, C) -> (B, C)."""
    if _num(t) < 1.0:
        raise ValueError(f"the tempered softmax here needs t >= 1, got {_num(t)}")
    if _num(t) == 1.0:
        return F.softmax(logits, dim=1)
    mu = logits.max(dim=1, keepdim=True).values
    shifted = logits - mu
    normalised = shifted
    for _ in range(iterations):
        partition = _exp_t(normalised, t).sum(dim=1, keepdim=True)
        normalised = shifted * partition ** (1.0 - t)
    partition = _exp_t(normalised, t).sum(dim=1, keepdim=True)
    return _exp_t(shifted - (-_log_t(1.0 / partition, t)), t)


def _bi_tempered(
    logits: torch.Tensor, targets: torch.Tensor, t1: Scalar = 0.8, t2: Scalar = 1.2
) -> torch.Tensor:
    if not (0.0 <= _num(t1) <= 1.0 and _num(t2) >= 1.0):
        raise ValueError(f"bi-tempered needs t1 in [0, 1] and t2 >= 1, got t1={_num(t1)}, t2={_num(t2)}")
    t = _as_distribution(logits, targets)
    p = tempered_softmax(logits, t2)
    eps = torch.finfo(p.dtype).tiny
    cross = t * (_log_t(t + eps, t1) - _log_t(p, t1))
    return (cross - (t ** (2.0 - t1) - p ** (2.0 - t1)) / (2.0 - t1)).sum(1)


_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "ce": _ce,
    "focal": _focal,
    "gce": _gce,
    "sce": _sce,
    "class-balanced": _class_balanced,
    "poly-soft": _poly_soft,
    "bi-tempered": _bi_tempered,
}
