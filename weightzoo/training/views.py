"""Data views: the augmentations a method applies to the inputs of a batch.

A method declares its views in :meth:`weightzoo.methods.base.Method.collate`; this module
holds the functions they are built from.  All take and return a (B, C, H, W) batch on any
device and leave vectors (B, D) unchanged.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def crop_flip(x: torch.Tensor, padding: int = 4, min_size: int = 28, flip: bool = True) -> torch.Tensor:
    """Random ``padding``-pixel zero-padded crop (a translation) and, with ``flip``, a random
    horizontal flip of images >= ``min_size`` px."""
    if x.dim() != 4 or x.shape[-1] < min_size:
        return x
    b, _, h, w = x.shape
    padded = nn.functional.pad(x, (padding,) * 4)
    oy = torch.randint(0, 2 * padding + 1, (b,), device=x.device)
    ox = torch.randint(0, 2 * padding + 1, (b,), device=x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch_idx = torch.arange(b, device=x.device)[:, None, None, None]
    chan_idx = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    cropped = padded[batch_idx, chan_idx, rows, cols]
    if not flip:
        return cropped
    flipped = torch.rand(b, device=x.device) < 0.5
    return torch.where(flipped[:, None, None, None], cropped.flip(3), cropped)


def mixup(
    x: torch.Tensor, y_soft: torch.Tensor, alpha: float = 1.0,
    generator: torch.Generator | None = None, dominant: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix a batch with a permutation of itself: x (B, ...), y_soft (B, C) -> same shapes.

    lambda ~ Beta(alpha, alpha); ``dominant`` uses max(lambda, 1 - lambda), so the
    un-permuted sample dominates (CMW-Net-SL). Randomness comes from ``generator``
    (a CPU generator) or else the global torch RNG.
    """
    if y_soft.dim() != 2 or y_soft.shape[0] != x.shape[0] or not y_soft.is_floating_point():
        raise ValueError(
            f"y_soft must be float (batch, classes) for {x.shape[0]} inputs, "
            f"got {y_soft.dtype} {tuple(y_soft.shape)}"
        )
    lam, perm = mixup_pairing(x.shape[0], alpha, generator, dominant)
    perm = perm.to(x.device)
    x_mixed = lam * x + (1.0 - lam) * x[perm]
    y_mixed = lam * y_soft + (1.0 - lam) * y_soft[perm.to(y_soft.device)]
    return x_mixed, y_mixed


def mixup_pairing(
    batch_size: int, alpha: float, generator: torch.Generator | None = None, dominant: bool = False,
) -> tuple[float, torch.Tensor]:
    """(lambda, permutation (B,)) of one mixup: lambda ~ Beta(alpha, alpha), max(lambda,
    1 - lambda) with ``dominant``; from ``generator`` (CPU) or the global torch RNG."""
    if alpha <= 0:
        raise ValueError(f"mixup alpha must be > 0, got {alpha}")
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    if dominant:
        lam = max(lam, 1.0 - lam)
    return lam, torch.randperm(batch_size, generator=generator)
