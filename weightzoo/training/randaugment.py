"""FixMatch's strong view: RandAugment with random magnitudes ("RA", Sohn et al. 2020,
Table 12) followed by Cutout, applied per sample to a whole batch at once.

torchvision's ``transforms.v2.RandAugment`` draws one operation and magnitude per call, so a
batched tensor would get the same operation for every image; FixMatch draws them per image.
This module does that on the batch's device with batched tensor arithmetic: every image
gets ``num_ops`` operations, each drawn uniformly from :data:`OPS` with a magnitude drawn
uniformly from the operation's range (FixMatch's ranges), then a Cutout square of side
``cutout`` x the image size filled with mid-grey. Operations act on each image rescaled to
[0, 1] (by its own min and max, undone afterwards), so standardised inputs work. Equalize is
PIL's per-channel histogram equalisation, batched; Color acts on 3-channel images only
(identity on grey-scale).

Randomness comes from the global torch RNG of the batch's device (seeded and checkpointed
by the training engine).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

OPS: tuple[str, ...] = (
    "identity", "autocontrast", "brightness", "color", "contrast", "equalize", "sharpness", "posterize",
    "solarize", "rotate", "shear_x", "shear_y", "translate_x", "translate_y",
)
_GREY = 0.5  # fill of rotations, shears, translations and Cutout, in [0, 1] image units
Operation = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (images, levels (B,)) -> images


def strong_view(x: torch.Tensor, num_ops: int = 2, cutout: float = 0.5) -> torch.Tensor:
    """RandAugment (``num_ops`` random operations per image) + Cutout: (B, C, H, W) -> same."""
    if x.dim() != 4:
        raise ValueError(f"the strong view needs image batches (B, C, H, W), got shape {tuple(x.shape)}")
    low = x.amin(dim=(1, 2, 3), keepdim=True)
    span = (x.amax(dim=(1, 2, 3), keepdim=True) - low).clamp_min(1e-6)
    image = (x - low) / span
    for _ in range(num_ops):
        op = torch.randint(len(OPS), (x.shape[0],), device=x.device)
        image = _apply(image, op, torch.rand(x.shape[0], device=x.device))
    if cutout > 0:
        image = cutout_square(image, cutout)
    return image * span + low


def _apply(image: torch.Tensor, op: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """Operation ``OPS[op[i]]`` at ``level[i]`` in [0, 1] on image i (B, C, H, W) in [0, 1];
    each operation runs once, on the images that drew it."""
    out = image.clone()
    for k, name in enumerate(OPS):
        chosen = torch.nonzero(op == k).squeeze(1)
        if name != "identity" and chosen.numel():
            out[chosen] = _OPERATIONS[name](image[chosen], level[chosen]).clamp(0.0, 1.0)
    return out


def _enhance(degenerate: Callable[[torch.Tensor], torch.Tensor]) -> Operation:
    """PIL's ImageEnhance with factors 0.05..0.95: degenerate + factor * (image - degenerate)."""

    def operation(image: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        base = degenerate(image)
        return base + _col(0.05 + 0.9 * level) * (image - base)

    return operation


def _affine(build: Callable[[torch.Tensor], tuple[float, ...]]) -> Operation:
    """A geometric operation: ``build(a)`` gives the affine rows (a00, a01, a02, a10, a11, a12)
    in grid units for signed amounts a (B,) in [-1, 1] (random sign); the uncovered area is
    filled with mid-grey."""

    def operation(image: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        amount = torch.where(torch.rand_like(level) < 0.5, -level, level)
        theta = torch.stack([torch.as_tensor(v, dtype=image.dtype, device=image.device).expand_as(amount)
                             for v in build(amount)], dim=1).reshape(-1, 2, 3)
        grid = F.affine_grid(theta, list(image.shape), align_corners=False)
        return F.grid_sample(image - _GREY, grid, align_corners=False) + _GREY

    return operation


def _rotation(amount: torch.Tensor) -> tuple[torch.Tensor, ...]:
    angle = amount * math.radians(30.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    return cos, -sin, 0.0, sin, cos, 0.0


def cutout_square(image: torch.Tensor, size: float) -> torch.Tensor:
    """Fill a square of side ``size`` x the image size, centred at a random pixel of each
    image (clipped at the borders), with mid-grey: (B, C, H, W) in [0, 1] -> same."""
    b, _, h, w = image.shape
    side = max(1, round(size * min(h, w)))
    cy = torch.randint(0, h, (b, 1, 1), device=image.device)
    cx = torch.randint(0, w, (b, 1, 1), device=image.device)
    rows = torch.arange(h, device=image.device)[None, :, None]
    cols = torch.arange(w, device=image.device)[None, None, :]
    inside = ((rows - cy).abs() <= side // 2) & ((cols - cx).abs() <= side // 2)
    return torch.where(inside[:, None], torch.full_like(image, _GREY), image)


def _col(values: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, 1) for broadcasting over images."""
    return values.reshape(-1, 1, 1, 1)


def _grey(image: torch.Tensor) -> torch.Tensor:
    if image.shape[1] != 3:
        return image
    weights = torch.tensor([0.299, 0.587, 0.114], device=image.device, dtype=image.dtype)
    return (image * weights[None, :, None, None]).sum(1, keepdim=True).expand_as(image)


def _smooth(image: torch.Tensor) -> torch.Tensor:
    """PIL's SMOOTH filter (3x3, centre weight 5, total 13), per channel, edges kept."""
    kernel = torch.ones(3, 3, device=image.device, dtype=image.dtype)
    kernel[1, 1] = 5.0
    kernel = (kernel / kernel.sum()).expand(image.shape[1], 1, 3, 3)
    return F.conv2d(F.pad(image, (1, 1, 1, 1), mode="replicate"), kernel, groups=image.shape[1])


def _autocontrast(image: torch.Tensor) -> torch.Tensor:
    low = image.amin(dim=(2, 3), keepdim=True)
    span = image.amax(dim=(2, 3), keepdim=True) - low
    return torch.where(span > 1e-6, (image - low) / span.clamp_min(1e-6), image)


def _equalize(image: torch.Tensor) -> torch.Tensor:
    """PIL's ImageOps.equalize per channel of 8-bit images, batched: bin b maps to
    (pixels below b + step // 2) // step, step = (pixels - those in the top occupied bin) // 255;
    a channel with step 0 is left as it is."""
    b, c, h, w = image.shape
    pixels = (image * 255.0).round().long().clamp(0, 255).flatten(2)  # (B, C, HW)
    hist = torch.zeros(b, c, 256, device=image.device, dtype=torch.long)
    hist.scatter_add_(2, pixels, torch.ones_like(pixels))
    step = (h * w - hist.gather(2, pixels.amax(2, keepdim=True))) // 255  # (B, C, 1)
    lut = ((hist.cumsum(2) - hist + step // 2) // step.clamp_min(1)).clamp(max=255)
    equalized = lut.gather(2, pixels).to(image.dtype) / 255.0
    return torch.where(step > 0, equalized, image.flatten(2)).reshape(image.shape)


def _posterize(image: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Keep ``bits`` (B,) bits of each 8-bit pixel value."""
    levels = _col(2.0 ** bits)
    pixels = torch.floor(image * 255.0)
    step = 256.0 / levels
    return torch.floor(pixels / step) * step / 255.0


def _solarize(image: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    return torch.where(image >= _col(level), 1.0 - image, image)


_OPERATIONS: dict[str, Operation] = {
    "autocontrast": lambda image, level: _autocontrast(image),
    "brightness": _enhance(torch.zeros_like),
    "color": _enhance(_grey),
    "contrast": _enhance(lambda image: _grey(image).mean(dim=(1, 2, 3), keepdim=True)),
    "equalize": lambda image, level: _equalize(image),
    "sharpness": _enhance(_smooth),
    "posterize": lambda image, level: _posterize(image, 4 + torch.round(4 * level)),
    "solarize": _solarize,
    "rotate": _affine(_rotation),
    "shear_x": _affine(lambda a: (1.0, 0.3 * a, 0.0, 0.0, 1.0, 0.0)),
    "shear_y": _affine(lambda a: (1.0, 0.0, 0.0, 0.3 * a, 1.0, 0.0)),
    "translate_x": _affine(lambda a: (1.0, 0.0, 0.6 * a, 0.0, 1.0, 0.0)),  # grid units span 2
    "translate_y": _affine(lambda a: (1.0, 0.0, 0.0, 0.0, 1.0, 0.6 * a)),
}
