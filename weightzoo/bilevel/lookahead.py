"""The differentiable virtual step theta' = step(theta, grad objective(theta)) of bilevel training.

``lookahead`` runs ``torch.func.functional_call`` over the unmodified user module with
cloned buffers, so it never changes the real model's parameters, gradients or BatchNorm
statistics, and runs with autocast disabled (second-order terms in the model's dtype).
The update is the real optimizer's own: ``torch.optim.sgd.sgd`` (the function
``torch.optim.SGD.step`` calls) applied out of place to clones of the parameters and of
its momentum buffers, so autograd records it. It reproduces the real step's lr and,
optionally, its momentum, nesterov, dampening and weight decay (the reference code: plain
SGD with the scheduled lr).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.func import functional_call
from torch.optim.sgd import sgd

from weightzoo.weighting.reduction import LossTerm, total_loss

Objective = Callable[[torch.Tensor], dict[str, LossTerm]]
GradientTransform = Callable[[dict[str, "torch.Tensor | None"]], dict[str, "torch.Tensor | None"]]


@dataclass(frozen=True)
class LookaheadConfig:
    """What of the real optimizer the virtual step reproduces (the reference code: neither).

    include_momentum: use the real SGD's momentum buffers (torch SGD semantics: dampening,
        nesterov; before the first real step the buffer starts at the gradient).
    include_weight_decay: add the real SGD's ``weight_decay * theta`` to the virtual gradient.
    """

    include_momentum: bool = False
    include_weight_decay: bool = False


def functional_forward(model: nn.Module, state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The model's logits at ``state`` (parameters and buffers by name)."""
    out = functional_call(model, state, (x,))
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the model must return a logits tensor, got {type(out).__name__}")
    return out


class LookaheadStep(NamedTuple):
    """state: the full state for ``functional_call`` (stepped parameters, the unchanged
    frozen parameters, clones of all buffers as left by the forward on x); grads: the
    gradient each stepped parameter took, by name, with its graph where it has one."""

    state: dict[str, torch.Tensor]
    grads: dict[str, torch.Tensor | None]


def lookahead(
    model: nn.Module, x: torch.Tensor, objective: Objective, **options: Any
) -> dict[str, torch.Tensor]:
    """The state after the virtual step, for ``functional_call``: :func:`lookahead_step`'s
    ``state`` (``options``: its keyword arguments)."""
    return lookahead_step(model, x, objective, **options).state


def lookahead_step(
    model: nn.Module,
    x: torch.Tensor,
    objective: Objective,
    *,
    lr: float | None,
    optimizer: torch.optim.Optimizer | None = None,
    config: LookaheadConfig = LookaheadConfig(),
    only: set[str] | None = None,
    transform: GradientTransform | None = None,
    graph_only: set[str] | None = None,
) -> LookaheadStep:
    """Virtual step of ``model`` on the objective's gradient, differentiable through it.

    objective: logits of ``model`` on x -> named loss terms (may depend on other tensors,
        e.g. a weighter's output, through which theta' stays differentiable).
    lr: step size (the current scheduled lr); ``None`` takes each parameter's group lr.
    optimizer: the real optimizer (torch SGD); when given, only the parameters it holds are
        stepped (others stay fixed, as in the real step).
    only: step just these parameter names (an approximation, e.g. the last layer).
    transform: name -> gradient (with its graph) to the gradients the step takes, e.g. some
        detached (FaMUS: the meta-gradient then flows through the other layers only).
    graph_only: only these parameters' gradients keep their graph (create-graph backward,
        which stops at the lowest of them); the others come from a second, plain backward and
        step detached, so neither the second-order backward nor the meta forward records
        anything below the cut. Same values as a full create-graph backward followed by
        detaching the others; cheaper when the cut is high in a deep model.
    Returns the state after the step and the gradients it took (:class:`LookaheadStep`).
    """
    trainable, groups = steppable_parameters(model, optimizer, lr, config, only)
    named = dict(model.named_parameters())
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    with torch.autocast(device_type=x.device.type, enabled=False):
        terms = objective(functional_forward(model, {**named, **buffers}, x))
        if not isinstance(terms, dict) or not all(isinstance(t, LossTerm) for t in terms.values()):
            raise TypeError("the training objective must return named loss terms {name: LossTerm}")
        loss = total_loss(terms)
        graphed = trainable if graph_only is None else {n: p for n, p in trainable.items() if n in graph_only}
        plain = {n: p for n, p in trainable.items() if n not in graphed}
        grads = dict(zip(graphed, torch.autograd.grad(
            loss, list(graphed.values()), create_graph=True, allow_unused=True, retain_graph=True,
        ), strict=True))
        if plain:  # the forward's graph stays for the second-order backward and a kept forward
            grads.update(zip(plain, torch.autograd.grad(
                loss, list(plain.values()), allow_unused=True, retain_graph=True), strict=True))
        if transform is not None:
            grads = transform(grads)
    stepped = dict(named)
    stepped.update(virtual_step(graphed, tuple(grads[n] for n in graphed), groups, optimizer, config))
    stepped.update(virtual_step(plain, tuple(grads[n] for n in plain), groups, optimizer, config,
                                detached=True))
    return LookaheadStep({**stepped, **buffers}, grads)


def virtual_step(
    params: dict[str, torch.Tensor], grads: tuple[torch.Tensor | None, ...], groups: dict[int, dict],
    optimizer: torch.optim.Optimizer | None, config: LookaheadConfig, *, detached: bool = False,
) -> dict[str, torch.Tensor]:
    """theta' of every parameter with a gradient (a parameter without one is skipped, as
    torch SGD does); differentiable through ``grads`` when they carry a graph, or plain
    tensors from the detached parameters with ``detached``."""
    opt_state = optimizer.state if optimizer is not None else {}
    stepped = {}
    for (name, param), grad in zip(params.items(), grads, strict=True):
        if grad is not None:
            buf = opt_state.get(param, {}).get("momentum_buffer")
            value = param.detach() if detached else param
            stepped[name] = _virtual_sgd(value, grad, groups[id(param)], buf, config)
    return stepped


def gradient_coefficient(
    param: torch.Tensor, group: dict, optimizer: torch.optim.Optimizer | None, config: LookaheadConfig,
) -> float:
    """c with d theta' / d (grad of the objective) = -lr * c for this parameter's virtual step:
    1 for plain SGD; (1 - dampening), or 1 + momentum (1 - dampening) with nesterov, once a
    momentum buffer exists; 1, or 1 + momentum with nesterov, on the first step; negated
    with ``maximize``. (Weight decay adds a term that does not depend on the objective.)"""
    momentum = group.get("momentum", 0.0) if config.include_momentum else 0.0
    dampening = group.get("dampening", 0.0)
    nesterov = bool(group.get("nesterov", False)) and momentum != 0
    has_buffer = optimizer is not None and optimizer.state.get(param, {}).get("momentum_buffer") is not None
    if momentum == 0 or (not has_buffer and dampening != 0):
        c = 1.0
    else:
        kept = (1.0 - dampening) if has_buffer else 1.0
        c = 1.0 + momentum * kept if nesterov else kept
    return -c if group.get("maximize", False) else c


def steppable_parameters(
    model: nn.Module, optimizer: torch.optim.Optimizer | None, lr: float | None,
    config: LookaheadConfig, only: set[str] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[int, dict]]:
    """(name -> parameter the virtual step moves, id(param) -> its group with the step's lr);
    ``only``: restrict the step to these parameter names (the others stay at theta)."""
    groups = _param_groups(model, optimizer, lr, config)
    trainable = {name: p for name, p in model.named_parameters()
                 if p.requires_grad and id(p) in groups and (only is None or name in only)}
    if not trainable:
        raise ValueError("the model has no trainable parameters for the look-ahead step")
    return trainable, groups


def parameter_layers(model: nn.Module) -> list[tuple[str, list[str]]]:
    """The model's layers: (module name, its own parameters' full names) for every module
    that holds parameters, in registration order (the classifier head of a usual network
    last)."""
    layers = []
    for prefix, module in model.named_modules():
        names = [f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters(recurse=False)]
        if names:
            layers.append((prefix, names))
    if not layers:
        raise ValueError("the model has no parameters")
    return layers


def last_layer_parameters(model: nn.Module) -> set[str]:
    """Names of the parameters of the model's last layer (see :func:`parameter_layers`)."""
    return set(parameter_layers(model)[-1][1])


def _param_groups(
    model: nn.Module, optimizer: torch.optim.Optimizer | None, lr: float | None,
    config: LookaheadConfig,
) -> dict[int, dict]:
    """id(param) -> its optimizer group (with the look-ahead lr) for every steppable param."""
    needs_sgd = config.include_momentum or config.include_weight_decay
    if optimizer is None:
        if needs_sgd or lr is None:
            raise ValueError(
                "pass the real optimizer= to use its lr, momentum or weight decay in the look-ahead"
            )
        return {id(p): {"lr": lr} for p in model.parameters()}
    if not isinstance(optimizer, torch.optim.SGD):
        raise ValueError(
            f"the look-ahead reproduces torch SGD's update; got {type(optimizer).__name__} "
            "(pass optimizer=None and lr= for a plain SGD virtual step)"
        )
    groups: dict[int, dict] = {}
    for group in optimizer.param_groups:
        step_group = {**group, "lr": group["lr"] if lr is None else lr}
        groups.update({id(p): step_group for p in group["params"]})
    return groups


def _virtual_sgd(
    param: torch.Tensor, grad: torch.Tensor, group: dict, buf: torch.Tensor | None,
    config: LookaheadConfig,
) -> torch.Tensor:
    """One differentiable torch-SGD update of ``param`` by the real optimizer's ``sgd``.

    ``buf`` is the real optimizer's momentum buffer (``None`` before its first step), cloned
    and never written. torch starts a missing buffer at ``grad.detach()``, which would cut
    the meta-gradient. The same first step, differentiably: with dampening 0 a zero buffer
    (momentum * 0 + grad); otherwise (never nesterov) the first step is d_p = buf = grad,
    i.e. a momentum-free step.
    """
    momentum = group.get("momentum", 0.0) if config.include_momentum else 0.0
    dampening = group.get("dampening", 0.0)
    buffers: list[torch.Tensor | None] = [None]
    if momentum != 0 and buf is not None:
        buffers = [buf.detach().clone()]
    elif momentum != 0 and dampening == 0:
        buffers = [torch.zeros_like(grad)]
    elif momentum != 0:
        momentum = 0.0
    stepped = param.clone()
    sgd(
        [stepped], [grad], buffers, foreach=False,
        weight_decay=group.get("weight_decay", 0.0) if config.include_weight_decay else 0.0,
        momentum=momentum, lr=group["lr"], dampening=dampening,
        nesterov=bool(group.get("nesterov", False)) and momentum != 0,
        maximize=bool(group.get("maximize", False)),
    )
    return stepped
