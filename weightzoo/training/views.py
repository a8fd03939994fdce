"""Data views: the augmentations a method applies to the inputs of a batch.

A method declares its views in :meth:`weightzoo.methods.base.Method.collate`; this module
holds the functions they are built from.  All take and return a (B, C, H, W) batch on any
device and leave vectors (B, D) unchanged.
"""

from __future__ import annotations

import torch
from torch import nn


def crop_flip(x: torch.Tensor, padding: int = 4, min_size: int = 28) -> torch.Tensor:
    """Random ``padding``-pixel zero-padded crop and horizontal flip of images >= ``min_size`` px."""
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
    flip = torch.rand(b, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], cropped.flip(3), cropped)
