"""Classifier backbones by name: ``build_model("resnet32", num_classes, input_shape)``.

All models are plain ``nn.Module``s built from standard layers, so the meta-training code
can run them through ``torch.func.functional_call`` without any layer rewriting.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MODEL_DESCRIPTIONS: dict[str, str] = {
    "mlp": "flatten -> Linear/ReLU hidden layers (default 256) -> Linear; any input shape",
    "cnn": "4 conv layers with BatchNorm and adaptive pooling (~100k params); images >= 4x4",
    "resnet32": "CIFAR ResNet-32 of He et al. (3x5 BasicBlocks, 16/32/64 channels, ~0.46M)",
    "torchvision:NAME": "torchvision.models.get_model(NAME, weights=None), e.g. resnet18",
    "python:MODULE:FUNC": "your own model: FUNC(num_classes=C, input_shape=shape, **kwargs)",
}


def list_models() -> list[str]:
    """Names of the known models (``NAME`` stands for a torchvision model name)."""
    return list(MODEL_DESCRIPTIONS)


def build_model(
    name: str, num_classes: int, input_shape: tuple[int, ...], **kwargs: Any
) -> nn.Module:
    """Build a classifier mapping inputs (B, *input_shape) to logits (B, num_classes).

    kwargs go to the model: ``hidden`` (sizes) for mlp, ``width`` for cnn, anything
    ``torchvision.models.get_model`` accepts for ``torchvision:NAME``.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    input_shape = tuple(int(d) for d in input_shape)
    kind, _, arg = name.partition(":")
    if kind == "torchvision" and arg:
        return _torchvision_model(arg, num_classes, _image_shape(name, input_shape), **kwargs)
    if kind == "python" and arg:
        return _python_model(arg, num_classes, input_shape, **kwargs)
    builder = _BUILDERS.get(name)
    if builder is None:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    shape = input_shape if name == "mlp" else _image_shape(name, input_shape)
    return builder(num_classes, shape, **kwargs)


def _image_shape(name: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ValueError(f"model {name!r} needs image inputs (C, H, W), got {input_shape}")
    return input_shape[0], input_shape[1], input_shape[2]


class MLP(nn.Sequential):
    """Flatten -> [Linear -> ReLU] * len(hidden) -> Linear.  (B, *input_shape) -> (B, C)."""

    def __init__(self, num_classes: int, input_shape: tuple[int, ...],
                 hidden: Sequence[int] = (256,)) -> None:
        sizes = [math.prod(input_shape), *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(n_in, n_out), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], num_classes))
        super().__init__(*layers)


def _conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
            nn.ReLU()]


class SmallCNN(nn.Sequential):
    """Two conv-conv-pool stages (width, 2*width), adaptive 2x2 pooling, MLP head.

    About 100k parameters at width 32; works from 4x4 inputs (8x8 digits, 28x28 MNIST).
    (B, C_in, H, W) -> (B, num_classes).
    """

    def __init__(self, num_classes: int, input_shape: tuple[int, int, int],
                 width: int = 32) -> None:
        c_in, h, w = input_shape
        if min(h, w) < 4:
            raise ValueError(f"cnn needs images of at least 4x4, got {h}x{w}")
        super().__init__(
            *_conv_bn(c_in, width), *_conv_bn(width, width), nn.MaxPool2d(2),
            *_conv_bn(width, 2 * width), *_conv_bn(2 * width, 2 * width), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(8 * width, 4 * width), nn.ReLU(),
            nn.Linear(4 * width, num_classes),
        )


class PadShortcut(nn.Module):
    """Parameter-free shortcut "option A": subsample by ``stride``, zero-pad channels."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.pad = c_out - c_in

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus shortcut, then ReLU.  (B, c_in, H, W) -> (B, c_out, H/s, W/s)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = (
            PadShortcut(c_in, c_out, stride) if stride != 1 or c_in != c_out else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet-(6n+2) (He et al. 2016, §4.2): 3 stages of n BasicBlocks, 16/32/64
    channels, global average pooling.  n = 5 gives ResNet-32.  (B, C_in, H, W) -> (B, C).
    """

    def __init__(self, num_classes: int, input_shape: tuple[int, int, int],
                 blocks_per_stage: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(input_shape[0], 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers: list[nn.Module] = []
        c_in = 16
        for c_out, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(blocks_per_stage):
                layers.append(BasicBlock(c_in, c_out, stride if i == 0 else 1))
                c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: Tensor) -> Tensor:
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.fc(out.mean(dim=(2, 3)))


def _torchvision_model(
    name: str, num_classes: int, input_shape: tuple[int, int, int], **kwargs: Any
) -> nn.Module:
    """A randomly initialised torchvision model; non-RGB inputs get a learned 1x1 conv."""
    from torchvision import models

    if name not in models.list_models():
        raise ValueError(f"unknown torchvision model {name!r}; see torchvision.models.list_models()")
    model = models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    if input_shape[0] != 3:
        model = nn.Sequential(nn.Conv2d(input_shape[0], 3, 1), model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    except (RuntimeError, ValueError) as err:
        raise ValueError(
            f"torchvision:{name} does not accept inputs of shape {input_shape}; resize the "
            f"images or pick another model ({err})"
        ) from err
    return model.train(was_training)


def _python_model(
    target: str, num_classes: int, input_shape: tuple[int, ...], **kwargs: Any
) -> nn.Module:
    """A user factory ``MODULE:FUNC`` (importable), called with num_classes and input_shape."""
    import importlib

    module_name, _, func_name = target.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import model factory {target!r} ({err})") from None
    model = factory(num_classes=num_classes, input_shape=input_shape, **kwargs)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model factory {target!r} returned {type(model).__name__}, not nn.Module")
    return model


_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "cnn": SmallCNN,
    "resnet32": CifarResNet,
}
