"""Meta-gradient estimators: the pluggable seam of bilevel training.

A :class:`BilevelProblem` says what is meta-learned (``hyper_params``: a weighter's
parameters, a robust loss's hyper-parameters, ...), the training objective as named loss
terms of the model's logits (depending on ``hyper_params``), and the meta objective on a
meta batch. An estimator returns dL^meta(theta'(hyper))/d hyper, theta' = one virtual
step of the real optimizer. Estimators register by name (``register_estimator``) so that
recipes choose one (``estimator = "exact"``) and artifacts record which one trained them.

- ``exact``: the one-step look-ahead with a create-graph backward and the second-order
  backward through it (MW-Net Algorithm 1); the default.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from weightzoo.bilevel.lookahead import LookaheadConfig, Objective, functional_forward, lookahead

MetaLossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class BilevelProblem:
    """One meta step's inputs.

    model: the real model (never modified); x (B, ...): inputs of the training objective;
    objective: logits on x -> named loss terms, differentiable w.r.t. ``hyper_params``;
    meta_x (M, ...), meta_y (M,) or (M, C) soft; meta_loss_fn: (logits, meta_y) -> scalar;
    lr / optimizer / lookahead_config: the virtual step (see ``lookahead``).
    """

    model: nn.Module
    x: torch.Tensor
    objective: Objective
    meta_x: torch.Tensor
    meta_y: torch.Tensor
    meta_loss_fn: MetaLossFn
    hyper_params: list[torch.Tensor]
    lr: float | None
    optimizer: torch.optim.Optimizer | None = None
    lookahead_config: LookaheadConfig = field(default_factory=LookaheadConfig)


@dataclass(frozen=True)
class MetaGradient:
    """meta_loss: L^meta at theta'; grads: dL^meta/d hyper, one per ``hyper_params`` entry."""

    meta_loss: float
    grads: tuple[torch.Tensor, ...]


class MetaGradientEstimator(ABC):
    """dL^meta(theta'(hyper))/d hyper for a :class:`BilevelProblem`, touching no ``.grad``."""

    name: ClassVar[str]

    @abstractmethod
    def __call__(self, problem: BilevelProblem) -> MetaGradient: ...


_ESTIMATORS: dict[str, type[MetaGradientEstimator]] = {}


def register_estimator(cls: type[MetaGradientEstimator]) -> type[MetaGradientEstimator]:
    """Class decorator: make ``cls`` available by ``cls.name``."""
    if cls.name in _ESTIMATORS:
        raise ValueError(f"a meta-gradient estimator named {cls.name!r} is already registered")
    _ESTIMATORS[cls.name] = cls
    return cls


def estimator_names() -> tuple[str, ...]:
    return tuple(sorted(_ESTIMATORS))


def build_estimator(name: str) -> MetaGradientEstimator:
    if name not in _ESTIMATORS:
        raise ValueError(f"unknown meta-gradient estimator {name!r}; one of {', '.join(estimator_names())}")
    return _ESTIMATORS[name]()


@register_estimator
class ExactSecondOrder(MetaGradientEstimator):
    """The look-ahead through the real model and a second-order backward (exact)."""

    name = "exact"

    def __call__(self, problem: BilevelProblem) -> MetaGradient:
        state = lookahead(
            problem.model, problem.x, problem.objective, lr=problem.lr,
            optimizer=problem.optimizer, config=problem.lookahead_config,
        )
        with torch.autocast(device_type=problem.meta_x.device.type, enabled=False):
            logits = functional_forward(problem.model, state, problem.meta_x)
            meta_loss = problem.meta_loss_fn(logits, problem.meta_y)
            if meta_loss.dim() != 0:
                raise ValueError(f"meta_loss_fn must return a scalar, got {tuple(meta_loss.shape)}")
            grads = torch.autograd.grad(meta_loss, problem.hyper_params, materialize_grads=True)
        return MetaGradient(float(meta_loss.detach()), tuple(grads))


def apply_meta_gradient(
    result: MetaGradient, params: list[torch.Tensor], optimizer: torch.optim.Optimizer,
) -> None:
    """One step of the hyper-parameters' optimizer along ``result.grads``.

    A non-finite meta loss raises ``FloatingPointError`` and leaves the parameters unchanged.
    """
    if not math.isfinite(result.meta_loss):
        raise FloatingPointError(f"meta loss is {result.meta_loss}; the meta-learner was not updated")
    optimizer.zero_grad(set_to_none=True)
    for param, grad in zip(params, result.grads, strict=True):
        param.grad = grad
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
