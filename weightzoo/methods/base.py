"""The step contract between the training engine and a training method.

The engine owns batching, the real optimizer step, the lr schedule, evaluation,
checkpoints and data parallelism.  A :class:`Method` owns everything particular to one
way of training: its data views (:meth:`Method.collate`), its loss terms and weights
(:meth:`Method.step`), and any state of its own (a weighter being meta-learned, an EMA
model, per-sample label distributions), which it checkpoints through
``state_dict`` / ``load_state_dict``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from weightzoo.training.views import crop_flip
from weightzoo.weighting.reduction import LossTerm

if TYPE_CHECKING:
    from weightzoo.training.engine import Schedule, Trainer
    from weightzoo.weighting.families import TaskFamilies
    from weightzoo.weighting.learned_loss import LearnedRobustLoss
    from weightzoo.weighting.nets import CMWNet


@dataclass
class Batch:
    """One training batch as a method sees it.

    x (B, ...) labelled inputs (after the method's view), y (B,) their labels as given,
    index (B,) their positions in the training set; epoch, global iteration, current lr,
    and whether it is a warm-up iteration (plain loss before weighting starts).
    Optional fields a method's ``collate`` may fill: ``x_u_weak`` / ``x_u_strong``
    (U, ...) weak and strong views of unlabelled inputs with ``u_index`` (U,), and
    ``candidates`` (B, C) 0/1 candidate label sets (partial labels).
    """

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor
    epoch: int
    iteration: int
    lr: float
    warmup: bool
    x_u_weak: torch.Tensor | None = None
    x_u_strong: torch.Tensor | None = None
    u_index: torch.Tensor | None = None
    candidates: torch.Tensor | None = None


@dataclass
class StepOutput:
    """What a method's step returns: named loss terms (summed, each normalised on its own,
    into the objective the engine minimises), the per-sample weights it gave the labelled
    samples (B,) or None, and extra per-step numbers (scalar tensors or floats) averaged into
    the epoch's metrics -- tensors stay on the device until the epoch ends. ``grads``: the
    objective's gradient w.r.t. the model's parameters by name, when the method has it
    already (a lagged meta step's); the engine then steps along it instead of
    back-propagating the terms (one process, no loss scaling)."""

    terms: dict[str, LossTerm]
    weights: torch.Tensor | None = None
    logs: dict[str, torch.Tensor | float] = field(default_factory=dict)
    grads: dict[str, torch.Tensor | None] | None = None


@dataclass(frozen=True)
class TrainedArtifact:
    """A method's learned artifact (a weighter or a learned robust loss) and, for a weighter,
    the task families of the data it was trained on (recorded in its card)."""

    artifact: CMWNet | LearnedRobustLoss
    families: TaskFamilies | None = None


@dataclass(frozen=True)
class RunContext:
    """What a run knows before training starts: the data's classes, the clean meta set held
    out for the method (None when it asked for none) and the seed."""

    num_classes: int
    meta_x: torch.Tensor | None = None
    meta_y: torch.Tensor | None = None
    seed: int = 0


class Method(ABC):
    """A training method. Subclasses implement :meth:`step`; every other hook is optional.

    ``name`` is the registered name (set when the registry builds it); ``identity``
    (default: the name) is what a checkpoint must match to be resumed by this method.
    """

    name: str = "method"
    # whether the method's losses follow ``Schedule.rebalance`` (it calls ``trainer.rebalanced``)
    rebalances: bool = False

    @property
    def identity(self) -> str:
        return self.name

    def check_schedule(self, schedule: Schedule) -> None:
        """Refuse a schedule this method cannot follow, before any work (the trainer calls it
        before :meth:`setup`): by default, ``schedule.rebalance`` unless ``rebalances``."""
        if schedule.rebalance != "none" and not self.rebalances:
            raise ValueError(f"method {self.name!r} does not support schedule.rebalance = "
                             f"{schedule.rebalance!r} (plain losses and frozen artifacts do)")

    @property
    def clean_meta_per_class(self) -> int:
        """Clean samples per class the run must hold out as this method's meta set (0: none)."""
        return 0

    @property
    def singleton_meta_per_class(self) -> int:
        """Exactly labelled samples (one-label candidate sets) per class the partial-label
        regime must hold out of stage 2 as this method's meta set (0: none)."""
        return 0

    def bind(self, run: RunContext) -> None:  # noqa: B027 - optional hook
        """Called by the pipeline once the data is prepared, before the trainer exists."""

    def setup(self, trainer: Trainer) -> None:  # noqa: B027 - optional hook
        """Called once before training (and before a checkpoint's state is loaded)."""

    def join(self, lead: Method) -> None:  # noqa: B027 - optional hook
        """Multi-source training (``weightzoo.training.joint``), after :meth:`setup`: share what
        the first source's method (``lead``, the same class and config) learns, so that every
        source trains one artifact. Default: nothing is shared (each source trains alone)."""

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:  # noqa: B027 - optional hook
        """Called at the start of every epoch (e.g. to rebuild a meta set)."""

    def batch_pool(self, trainer: Trainer) -> tuple[torch.Tensor | None, int]:
        """The training indices the engine shuffles and batches each epoch (None: all of them)
        and the global batch size (default: the schedule's). FixMatch batches its unlabelled
        part and draws the labelled batch itself."""
        return None, trainer.schedule.batch_size

    def collate(
        self, trainer: Trainer, index: torch.Tensor, *, epoch: int, iteration: int, lr: float,
        warmup: bool,
    ) -> Batch:
        """The batch of training samples ``index`` (B,): the labelled view is the schedule's
        crop + flip when ``schedule.augment`` is set, else the inputs as they are."""
        x = trainer.data.x[index].to(trainer.device)
        if trainer.schedule.augment:
            x = crop_flip(x)
        return Batch(x=x, y=trainer.data.y[index].to(trainer.device), index=index, epoch=epoch,
                     iteration=iteration, lr=lr, warmup=warmup)

    @abstractmethod
    def step(self, trainer: Trainer, batch: Batch) -> StepOutput:
        """Named loss terms (and the weights used) for ``batch``; may run meta updates."""

    def after_step(self, trainer: Trainer, batch: Batch, output: StepOutput) -> None:  # noqa: B027
        """Called after every real optimizer step."""

    def epoch_metrics(self) -> dict[str, float]:
        """Extra numbers for the epoch's metrics row (reset each epoch)."""
        return {}

    def trained_artifact(self) -> TrainedArtifact | None:
        """What this method learned, published as the run's ``weighter/`` artifact, if any."""
        return None

    def provenance(self) -> dict[str, Any]:
        """What the artifact's card should record beyond the method's config (e.g. the
        meta-gradient estimator ``auto`` resolved to)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Restore what ``state_dict`` returned."""
