"""Meta sets: a clean balanced held-out subset, or one rebuilt from the training set.

Without clean data, CMW-Net (§4.2 "Establishing Meta dataset") takes, each epoch, the k
lowest-loss training samples of every (noisy) class, scored by an EMA of the model in
eval mode without augmentation, and enriches the meta loss with mixup.
:class:`MetaSet` is that machinery as one component every bilevel method uses.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from weightzoo.bilevel.famus import FamusConfig
from weightzoo.training.views import mixup

if TYPE_CHECKING:
    from weightzoo.training.engine import Trainer


META_SOURCES = ("clean", "train", "labeled", "singletons")


@dataclass
class MetaSetConfig:
    """The meta data of a bilevel method (the recipe's ``[meta]`` keys).

    source: ``clean`` (a held-out clean balanced set of ``per_class`` samples per class),
        ``train`` (rebuilt each epoch: the ``per_class`` lowest-loss samples per noisy class
        scored by an EMA model with decay ``ema_decay``) or ``labeled`` (each meta step's
        meta batch is the step's labelled batch, which the method passes: FixMatch, CMW-Net
        §7.2).
    meta_batch_size: meta samples per meta step; mixup_alpha: > 0 mixes meta batches with
        lambda ~ Beta(alpha, alpha).
    """

    source: str = "clean"
    per_class: int = 10
    meta_batch_size: int = 100
    mixup_alpha: float = 0.0
    ema_decay: float = 0.999

    def __post_init__(self) -> None:
        if self.source not in META_SOURCES:
            raise ValueError(f"meta.source must be one of {META_SOURCES}, got {self.source!r}")
        for key in ("meta_batch_size", "per_class"):
            if getattr(self, key) < 1:
                raise ValueError(f"meta.{key} must be >= 1")
        if self.mixup_alpha < 0:
            raise ValueError("meta.mixup_alpha must be >= 0")
        if not 0.0 <= self.ema_decay <= 1.0:
            raise ValueError("meta.ema_decay must be in [0, 1]")


@dataclass
class VirtualStepConfig(MetaSetConfig):
    """Meta data plus what of the real optimizer the virtual step reproduces, and the
    options of the ``famus`` estimator (``[meta.famus]``, used when a method chooses it)."""

    include_momentum: bool = False
    include_weight_decay: bool = False
    famus: FamusConfig = field(default_factory=FamusConfig)


class MetaSet:
    """Meta batches for a bilevel method: from a clean set given at construction or by
    :meth:`bind`, or rebuilt from the training set each epoch (``source = "train"``).

    Lifecycle: ``setup(trainer)`` once, ``rebuild(trainer)`` each epoch, ``batch(trainer)``
    per meta step, ``after_step(trainer)`` after each real step (EMA update); the EMA model
    is checkpointed through ``state_dict``.
    """

    def __init__(self, config: MetaSetConfig, meta_x: torch.Tensor | None = None,
                 meta_y: torch.Tensor | None = None) -> None:
        self.config, self.x, self.y = config, meta_x, meta_y
        self.ema: ModelEMA | None = None
        self._draws = 0  # meta batches drawn (seeds the data-parallel generator)

    @property
    def clean_per_class(self) -> int:
        """Clean samples per class the run must hold out (0 when rebuilt from training data)."""
        return self.config.per_class if self.config.source == "clean" else 0

    def bind(self, meta_x: torch.Tensor | None, meta_y: torch.Tensor | None) -> None:
        if meta_x is not None:
            self.x, self.y = meta_x, meta_y

    def setup(self, trainer: Trainer) -> None:
        if self.config.source in ("clean", "singletons") and (self.y is None or len(self.y) == 0):
            raise ValueError(f"a held-out meta set (meta_x, meta_y) is required for meta.source = "
                             f"{self.config.source!r}")
        if self.config.source == "train":
            self.ema = ModelEMA(trainer.module, self.config.ema_decay)

    def rebuild(self, trainer: Trainer) -> None:
        if self.ema is not None:
            index = lowest_loss_indices(self.ema.module, trainer.data.x, trainer.data.y,
                                        self.config.per_class)
            self.x, self.y = trainer.data.x[index], trainer.data.y[index]

    def batch(self, trainer: Trainer, *, dominant: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """A meta batch (M, ...) with labels (M,), or soft (M, C) labels under mixup.

        Under torchrun every rank draws the same global meta batch from a generator seeded
        alike on all ranks (the global RNG differs between ranks) and keeps its shard.
        """
        if self.config.source == "labeled":
            raise ValueError("meta.source = 'labeled': the method passes each meta step its labelled batch")
        assert self.x is not None and self.y is not None, "setup() / rebuild() first"
        rank, world = trainer.rank, trainer.world
        generator = None
        if world > 1:
            self._draws += 1
            generator = torch.Generator().manual_seed(trainer.seed * 1_000_003 + self._draws)
        size = min(self.config.meta_batch_size, len(self.y))
        pick = torch.randperm(len(self.y), generator=generator)[:size]
        x, y = self.x[pick].to(trainer.device), self.y[pick].to(trainer.device)
        if self.config.mixup_alpha > 0:
            soft = F.one_hot(y, trainer.data.num_classes).float()
            x, y = mixup(x, soft, self.config.mixup_alpha, generator=generator, dominant=dominant)
        return (x[rank::world], y[rank::world]) if world > 1 else (x, y)

    def after_step(self, trainer: Trainer) -> None:
        if self.ema is not None:
            self.ema.update(trainer.module)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"meta_draws": self._draws}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._draws = int(state.get("meta_draws", 0))
        if self.ema is not None and "ema" in state:
            self.ema.load_state_dict(state["ema"])


def balanced_clean_indices(labels: torch.Tensor, per_class: int, seed: int = 0) -> torch.Tensor:
    """Random ``per_class`` indices of every class (all of a smaller class), sorted: (N,) -> (M,).

    The caller holds these clean samples out of the training set.
    """
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    labels = torch.as_tensor(labels).reshape(-1).cpu()
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for cls in torch.unique(labels):
        members = torch.nonzero(labels == cls).squeeze(1)
        chosen.append(members[torch.randperm(members.numel(), generator=generator)[:per_class]])
    if not chosen:
        return torch.empty(0, dtype=torch.long)
    return torch.cat(chosen).sort().values


def lowest_loss_indices(
    model: nn.Module, x: torch.Tensor, noisy_labels: torch.Tensor, per_class: int,
    batch_size: int = 512,
) -> torch.Tensor:
    """The ``per_class`` lowest-CE samples of every noisy class, sorted: x (N, ...) -> (M,).

    ``x`` must be un-augmented; the model (e.g. ``ModelEMA.module``) scores it in eval mode
    under ``no_grad`` on its own device, and every submodule's train/eval mode is restored.
    Ties go to the lower index.
    """
    if per_class < 1 or batch_size < 1:
        raise ValueError("per_class and batch_size must be >= 1")
    noisy_labels = torch.as_tensor(noisy_labels).reshape(-1).long()
    if noisy_labels.numel() != x.shape[0]:
        raise ValueError(f"{noisy_labels.numel()} labels for {x.shape[0]} samples")
    losses = _score(model, x, noisy_labels, batch_size).cpu()
    labels = noisy_labels.cpu()
    chosen = []
    for cls in torch.unique(labels):
        members = torch.nonzero(labels == cls).squeeze(1)
        order = torch.sort(losses[members], stable=True).indices
        chosen.append(members[order[:per_class]])
    if not chosen:
        return torch.empty(0, dtype=torch.long)
    return torch.cat(chosen).sort().values


def _score(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Per-sample CE (N,) of the model in eval mode; submodule modes are restored."""
    modes = {module: module.training for module in model.modules()}
    tensors = [*model.parameters(), *model.buffers()]
    device = tensors[0].device if tensors else x.device
    model.eval()
    try:
        with torch.no_grad():
            out = []
            for start in range(0, x.shape[0], batch_size):
                xb = x[start : start + batch_size].to(device)
                yb = labels[start : start + batch_size].to(device)
                out.append(F.cross_entropy(model(xb), yb, reduction="none"))
    finally:
        for module, training in modes.items():
            module.training = training
    return torch.cat(out) if out else torch.empty(0)


class ModelEMA:
    """Exponential moving average of a model's parameters and floating buffers.

    ``update``: ema <- d * ema + (1 - d) * model for floating tensors, with the Mean Teacher
    ramp d = min(decay, 1 - 1 / (t + 1)) at the t-th update (t = 0, 1, ...): until the
    decay's horizon is reached the copy is the running mean of the models seen, not of the
    initialisation (with decay 0.997 a small dataset's warm-up of a few dozen steps would
    otherwise leave a teacher that is ~90% random weights). Integer buffers (BatchNorm's
    ``num_batches_tracked``) are copied. ``.module`` is an eval-mode, gradient-free copy to
    score samples or to produce soft labels; ``state_dict`` holds it and the update count.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        current = _named_tensors(model)
        averaged = _named_tensors(self.module)
        if current.keys() != averaged.keys():
            raise ValueError("the model's state does not match the EMA copy's (other architecture?)")
        decay = min(self.decay, 1.0 - 1.0 / (self.updates + 1))
        for key, ema_value in averaged.items():
            value = current[key].to(ema_value.device)
            if ema_value.is_floating_point():
                ema_value.mul_(decay).add_(value, alpha=1.0 - decay)
            else:
                ema_value.copy_(value)
        self.updates += 1


def _named_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers by name, each shared tensor once (tied weights average once)."""
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}
