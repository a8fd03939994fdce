"""Meta-gradient estimators: the pluggable seam of bilevel training.

A :class:`BilevelProblem` says what is meta-learned (``hyper_params``: a weighter's
parameters, a robust loss's hyper-parameters, ...), the training objective as named loss
terms of the model's logits (depending on ``hyper_params``), and the meta objective on a
meta batch. An estimator returns dL^meta(theta'(hyper))/d hyper, theta' = one virtual
step of the real optimizer. Estimators register by name (``register_estimator``) so that
recipes choose one (``estimator = "exact"``) and artifacts record which one trained them.

- ``exact``: the one-step look-ahead with a create-graph backward and the second-order
  backward through it (MW-Net Algorithm 1); the default; any objective.
- ``last-layer``: an approximation, the cheap baseline of FaMUS: the same look-ahead but the
  virtual step moves only the last layer's parameters (features fixed), so the second-order
  terms involve the head only.
- ``famus``: FaMUS (Xu et al. 2021; ``weightzoo.bilevel.famus``): learned per-layer gradient
  samplers choose which layers the second-order backward goes through.
- ``jvp``: the same gradient without the second-order backward (MW-Net Eq. 6 in general
  form). With theta' = theta - lr c grad_theta L(theta, hyper) (+ terms free of hyper) and
  g = grad L^meta(theta'), dL^meta/dhyper = -d/dhyper [ D_u L(theta, hyper) ], u = lr c g:
  the directional derivative of the training objective along u, computed by one
  forward-mode pass of the model at theta with dual parameters (BatchNorm's batch coupling
  included), whose tangent is then differentiated in reverse mode w.r.t. the
  hyper-parameters only (a backward through the objective and the weighter, not the
  model). For L = sum v_i l_i / sum v this is dL^meta/dv_i = -(j_i - sum_k v_k j_k / sum v)
  / sum v with j = J_l u, the form DESIGN.md states; any objective works.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn
from torch.autograd import forward_ad

from weightzoo import distributed
from weightzoo.bilevel.lookahead import (
    LookaheadConfig,
    Objective,
    functional_forward,
    gradient_coefficient,
    last_layer_parameters,
    lookahead_step,
    steppable_parameters,
    virtual_step,
)
from weightzoo.weighting.reduction import LossTerm, safe_divide

MetaLossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class BilevelProblem:
    """One meta step's inputs.

    model: the real model (never modified); x (B, ...): inputs of the training objective;
    objective: logits on x -> named loss terms, differentiable w.r.t. ``hyper_params``;
    meta_x (M, ...), meta_y (M,) or (M, C) soft; meta_loss_fn: (logits, meta_y) -> scalar;
    lr / optimizer / lookahead_config: the virtual step (see ``lookahead``);
    keep_forward: return the look-ahead's forward at theta for the real step;
    keep_gradient: with it, the training objective's gradient at theta for every parameter
        the real optimizer steps (a lagged real step; estimators that step every layer);
    shared_hyper_params: the hyper-parameters are the same on every rank (a weighter, a
    loss's), so their gradient is summed over ranks; False for per-sample ones (L2RW's eps).
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
    keep_forward: bool = False
    keep_gradient: bool = False
    shared_hyper_params: bool = True

    def __post_init__(self) -> None:
        if self.keep_gradient and not self.keep_forward:
            raise ValueError("keep_gradient (a lagged real step) needs keep_forward")

    @property
    def real_backward(self) -> bool:
        """Whether the real step will back-propagate through the kept forward (so the meta
        step's backward must retain its graph)."""
        return self.keep_forward and not self.keep_gradient


@dataclass(frozen=True)
class KeptForward:
    """The look-ahead's forward of the real model at theta on x, kept for the real step.

    logits (B, C) carry the autograd graph to the model's parameters; buffers are the
    model's buffers as that forward left them (BatchNorm running statistics advanced once,
    exactly as a fresh forward would). Reusing it saves the real step's forward; it differs
    from a fresh forward only where the forward is random (dropout masks are shared with
    the look-ahead) or runs under autocast (the kept forward is full precision).
    terms: the training objective's terms on it (detached), with the hyper-parameters as
    they were *before* this meta update; grads: their gradient w.r.t. the model's stepped
    parameters by name (detached), when the problem asked to keep it -- a real step along
    it saves the real backward too, but weights the batch one meta update behind.
    """

    logits: torch.Tensor
    buffers: dict[str, torch.Tensor]
    terms: dict[str, LossTerm]
    grads: dict[str, torch.Tensor | None] | None = None

    def restore_buffers(self, model: nn.Module) -> None:
        """Advance the real model's buffers as the kept forward did."""
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                buffer.copy_(self.buffers[name])


@dataclass(frozen=True)
class MetaGradient:
    """meta_loss: L^meta at theta'; grads: dL^meta/d hyper, one per ``hyper_params`` entry;
    forward: the look-ahead's forward at theta when the problem asked to keep it."""

    meta_loss: float
    grads: tuple[torch.Tensor, ...]
    forward: KeptForward | None = None


class MetaGradientEstimator(ABC):
    """dL^meta(theta'(hyper))/d hyper for a :class:`BilevelProblem`, touching no ``.grad``
    of the problem's tensors. An estimator may learn state of its own (FaMUS's samplers):
    it is built for a run by :meth:`from_config`, sized to the model by :meth:`prepare`
    and checkpointed through ``state_dict``."""

    name: ClassVar[str]

    @classmethod
    def from_config(cls, meta: Any, seed: int) -> MetaGradientEstimator:
        """The estimator for a run whose ``[meta]`` config is ``meta`` (default: no options)."""
        return cls()

    def prepare(self, model: nn.Module) -> None:  # noqa: B027 - optional hook
        """Size any learned state to ``model`` (before a resume loads it)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Restore what ``state_dict`` returned."""

    def take_metrics(self) -> dict[str, float]:
        """Numbers about the calls since the last take (for the epoch's metrics row)."""
        return {}

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


AUTO = "auto"


def build_estimator(name: str, meta: Any = None, seed: int = 0) -> MetaGradientEstimator:
    """The estimator ``name``, with its options from the method's ``[meta]`` config when given."""
    if name not in _ESTIMATORS:
        raise ValueError(f"unknown meta-gradient estimator {name!r}; one of {', '.join(estimator_names())}")
    cls = _ESTIMATORS[name]
    return cls() if meta is None else cls.from_config(meta, seed)


def require_single_process(name: str) -> None:
    """Estimators that differentiate through a create-graph backward run in one process."""
    if distributed.rank_and_world()[1] > 1:
        raise ValueError(f"the {name!r} estimator runs in one process; under torchrun use "
                         "estimator 'jvp' (or 'auto')")


def fastest_exact_estimator(model: nn.Module) -> str:
    """``jvp`` for models with convolutions or batch norm (whose double backward dominates the
    second-order route), ``exact`` otherwise (a JVP through a linear layer costs more than its
    double backward); both give the same gradient. Measured in benchmarks/README.md."""
    costly = (nn.modules.conv._ConvNd, nn.modules.batchnorm._NormBase)
    return "jvp" if any(isinstance(m, costly) for m in model.modules()) else "exact"


@register_estimator
class ExactSecondOrder(MetaGradientEstimator):
    """The look-ahead through the real model and a second-order backward (exact)."""

    name = "exact"

    def step_only(self, model: nn.Module) -> set[str] | None:
        """The parameters the virtual step moves (None: all)."""
        return None

    def __call__(self, problem: BilevelProblem) -> MetaGradient:
        require_single_process(self.name)
        only = self.step_only(problem.model)
        if only is not None and problem.keep_gradient:
            raise ValueError(f"the {self.name!r} estimator computes the gradient of some layers only; "
                             "a lagged real step needs an estimator that steps every layer")
        seen = ObjectiveCalls(problem.objective)
        state, grads = lookahead_step(
            problem.model, problem.x, seen, lr=problem.lr,
            optimizer=problem.optimizer, config=problem.lookahead_config, only=only,
        )
        kept = kept_forward(problem, seen, state, grads)
        with torch.autocast(device_type=problem.meta_x.device.type, enabled=False):
            logits = functional_forward(problem.model, state, problem.meta_x)
            meta_loss = scalar_meta_loss(problem, logits)
            grads = torch.autograd.grad(meta_loss, problem.hyper_params, materialize_grads=True,
                                        retain_graph=problem.real_backward)
        return MetaGradient(float(meta_loss.detach()), tuple(grads), kept)


@register_estimator
class LastLayer(ExactSecondOrder):
    """The look-ahead through the last layer only (an approximation)."""

    name = "last-layer"

    def step_only(self, model: nn.Module) -> set[str] | None:
        return last_layer_parameters(model)


def scalar_meta_loss(problem: BilevelProblem, logits: torch.Tensor) -> torch.Tensor:
    """The problem's meta loss on the meta batch's logits, checked to be a scalar."""
    meta_loss = problem.meta_loss_fn(logits, problem.meta_y)
    if meta_loss.dim() != 0:
        raise ValueError(f"meta_loss_fn must return a scalar, got {tuple(meta_loss.shape)}")
    return meta_loss


class ObjectiveCalls:
    """A problem's objective that remembers its first call: the look-ahead's forward at theta
    (logits (B, C)) and the terms the objective made of it."""

    def __init__(self, objective: Objective) -> None:
        self.objective = objective
        self.logits: torch.Tensor | None = None
        self.terms: dict[str, LossTerm] = {}

    def __call__(self, logits: torch.Tensor) -> dict[str, LossTerm]:
        terms = self.objective(logits)
        if self.logits is None:
            self.logits, self.terms = logits, terms
        return terms


def kept_forward(
    problem: BilevelProblem, first: ObjectiveCalls, state: dict[str, torch.Tensor],
    grads: dict[str, torch.Tensor | None],
) -> KeptForward | None:
    """The first forward, with a snapshot of the buffers it left (before the meta forward),
    its terms and, when asked, the objective's gradient ``grads`` (detached; the logits are
    then detached too: nothing back-propagates through them again)."""
    if not problem.keep_forward:
        return None
    assert first.logits is not None, "the objective was never called"
    terms = {name: LossTerm(term.losses.detach(), None if term.weights is None else term.weights.detach(),
                            term.normalization, term.coef) for name, term in first.terms.items()}
    kept_grads = ({n: None if g is None else g.detach() for n, g in grads.items()}
                  if problem.keep_gradient else None)
    logits = first.logits if kept_grads is None else first.logits.detach()
    return KeptForward(logits, {n: state[n].clone() for n, _ in problem.model.named_buffers()},
                       terms, kept_grads)


@register_estimator
class ExactJVP(MetaGradientEstimator):
    """The exact meta-gradient with one forward-mode pass instead of the second-order backward
    (see the module docstring). Uses the RNG exactly as ``exact`` does: the dual forward
    replays the first forward's dropout masks.

    Data-parallel (under torchrun): each rank holds its shard of the training batch and of
    the meta batch; the virtual step uses the global gradient of the objective (every term
    normalised by its global denominator), g is the gradient of the global meta loss (the
    mean over the global meta batch), and the hyper-gradient is the sum of the ranks'
    contributions, so every rank gets the single-process gradient. Per term t, with
    N_t / D_t its numerator / denominator and T_t the directional derivative of N_t, the
    rank's contribution is the gradient of T_t / D - (sum T) D_t / D^2 (D, sum T: global).
    """

    name = "jvp"

    def __call__(self, problem: BilevelProblem) -> MetaGradient:
        model, x, config = problem.model, problem.x, problem.lookahead_config
        trainable, groups = steppable_parameters(model, problem.optimizer, problem.lr, config)
        named = dict(model.named_parameters())
        original_buffers = {n: b.clone() for n, b in model.named_buffers()}
        buffers = {n: b.clone() for n, b in original_buffers.items()}
        device = x.device
        with torch.autocast(device_type=device.type, enabled=False):
            rng = _rng_state(device)
            first = ObjectiveCalls(problem.objective)
            parts = [(term.coef, *term.terms())
                     for term in first(functional_forward(model, {**named, **buffers}, x)).values()]
            loss = sum(coef * safe_divide(numerator, _global(denominator))
                       for coef, numerator, denominator in parts)
            grads = _all_reduced(torch.autograd.grad(loss, list(trainable.values()), allow_unused=True,
                                                     retain_graph=problem.real_backward))
            kept = kept_forward(problem, first, buffers, dict(zip(trainable, grads, strict=True)))
            with torch.no_grad():
                stepped = virtual_step(trainable, grads, groups, problem.optimizer, config,
                                       detached=True)
            meta_params = {n: p.requires_grad_(True) for n, p in stepped.items()}
            meta_buffers = {n: b.clone() for n, b in buffers.items()}
            meta_logits = functional_forward(model, {**named, **meta_buffers, **meta_params},
                                             problem.meta_x)
            meta_loss = scalar_meta_loss(problem, meta_logits)
            share = len(problem.meta_x) / float(_global(torch.tensor(float(len(problem.meta_x)))))
            g = _all_reduced(torch.autograd.grad(meta_loss * share, list(meta_params.values())))
            global_meta_loss = float(_global(meta_loss.detach() * share))
            after_meta = _rng_state(device)
            _set_rng_state(device, rng)  # the first forward's dropout masks
            with forward_ad.dual_level():
                state = {**{n: p.detach() for n, p in named.items()}, **original_buffers}
                for (name, g_p) in zip(meta_params, g, strict=True):
                    param, group = trainable[name], groups[id(trainable[name])]
                    scale = group["lr"] * gradient_coefficient(param, group, problem.optimizer, config)
                    state[name] = forward_ad.make_dual(param.detach(), g_p * scale)
                dual_terms = problem.objective(functional_forward(model, state, x)).values()
                surrogate = sum(term.coef * _directional_part(*term.terms()) for term in dual_terms)
            _set_rng_state(device, after_meta)
            if not isinstance(surrogate, torch.Tensor) or not surrogate.requires_grad:
                raise ValueError("the training objective does not depend on both the model and the "
                                 "hyper-parameters being meta-learned")
            try:
                hyper = torch.autograd.grad(-surrogate, problem.hyper_params, materialize_grads=True,
                                            allow_unused=True)
            except RuntimeError as err:  # a forward-AD formula torch cannot reverse-differentiate
                raise ValueError(f"the 'jvp' estimator cannot differentiate this objective "
                                 f"({' '.join(str(err).split()[:12])} ...); use estimator 'exact'") from err
        if problem.shared_hyper_params:
            hyper = _all_reduced(hyper)
        return MetaGradient(global_meta_loss, tuple(hyper), kept)


def _global(value: torch.Tensor) -> torch.Tensor:
    """A detached sum over ranks (the value itself in one process)."""
    return distributed.all_reduce_sum(value.detach())


def _all_reduced(grads: tuple[torch.Tensor | None, ...]) -> tuple[torch.Tensor | None, ...]:
    """Each gradient summed over ranks (unchanged in one process)."""
    return tuple(None if g is None else distributed.all_reduce_sum(g) for g in grads)


def _directional_part(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """This rank's part of the directional derivative of N / D (N dual, D global, zero-sum
    guard), whose gradient w.r.t. the hyper-parameters is this rank's contribution."""
    tangent = forward_ad.unpack_dual(numerator).tangent
    if tangent is None:
        return torch.zeros((), device=numerator.device)
    total_d, total_t = _global(denominator), _global(tangent)
    guarded = torch.where(total_d > 0, total_d, torch.ones_like(total_d))
    centring = torch.where(total_d > 0, total_t * denominator / guarded**2, torch.zeros_like(total_d))
    return tangent / guarded - centring


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(device: torch.device, state: tuple[torch.Tensor, torch.Tensor | None]) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


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
