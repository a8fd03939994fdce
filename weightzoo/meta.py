"""One-step look-ahead meta update (MW-Net Algorithm 1, CMW-Net Algorithm 1).

For a training batch (x, y) and a meta batch (x^m, y^m):

1. per-sample losses l_i at theta, weights v_i = V(l_i, family_i; Theta);
2. virtual step theta'(Theta) = theta - lr * grad_theta reduce(l, v), kept differentiable
   w.r.t. Theta (``create_graph=True``); optionally with the real SGD optimizer's
   momentum buffers and weight decay;
3. meta loss L^meta(theta'(Theta)) on the meta batch; Theta takes one step of its own
   optimizer along grad_Theta L^meta;
4. the caller takes the real step on theta with weights from the updated Theta (``weigh``).

The look-ahead runs ``torch.func.functional_call`` over the unmodified user module with
cloned buffers, so it never changes the real model's parameters, gradients or BatchNorm
statistics.  It runs with autocast disabled (second-order terms in the model's dtype).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from weightzoo.losses import per_sample_loss
from weightzoo.reduction import reduce_weighted

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy_per_sample(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Default training loss: CE per sample, (B, C) x ((B,) or (B, C) soft) -> (B,)."""
    return per_sample_loss("ce", logits, targets)


def cross_entropy_mean(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Default meta loss: mean CE over the meta batch, hard or soft (mixup) targets -> scalar."""
    return per_sample_loss("ce", logits, targets).mean()


@dataclass(frozen=True)
class LookaheadConfig:
    """What of the real optimizer the virtual step reproduces (the reference code: neither).

    include_momentum: use the real SGD's momentum buffers (torch SGD semantics: dampening,
        nesterov, first step ``buf = d_p``).
    include_weight_decay: add the real SGD's ``weight_decay * theta`` to the virtual gradient.
    """

    include_momentum: bool = False
    include_weight_decay: bool = False


@dataclass(frozen=True)
class MetaGradient:
    """meta_loss: L^meta at theta'; grads: dL^meta/dTheta per weighter parameter;
    losses: (B,) detached per-sample training losses at theta."""

    meta_loss: float
    grads: tuple[torch.Tensor, ...]
    losses: torch.Tensor


@dataclass(frozen=True)
class MetaStepResult:
    """meta_loss: L^meta before the update of Theta; losses: (B,) detached training losses at
    theta; weights: (B,) weights of those losses under the updated Theta (no grad)."""

    meta_loss: float
    losses: torch.Tensor
    weights: torch.Tensor


def lookahead(
    model: nn.Module,
    x: torch.Tensor,
    objective: Callable[[torch.Tensor], torch.Tensor],
    *,
    lr: float | None,
    optimizer: torch.optim.Optimizer | None = None,
    config: LookaheadConfig = LookaheadConfig(),
) -> dict[str, torch.Tensor]:
    """Virtual SGD step theta' = theta - lr * d_p, differentiable through ``objective``.

    objective: logits of ``model`` on x -> scalar training objective (may depend on other
        tensors, e.g. a weighter's output, through which theta' stays differentiable).
    lr: step size (the current scheduled lr); ``None`` takes each parameter's group lr.
    optimizer: the real optimizer; when given, only the parameters it holds are stepped
        (others stay fixed, as in the real step). Momentum / weight decay need a torch SGD.
    Returns the full state for ``functional_call``: stepped parameters, the unchanged
    frozen parameters, and clones of all buffers (as left by the forward on x).
    """
    groups = _param_groups(model, optimizer, lr, config)
    named = dict(model.named_parameters())
    trainable = {name: p for name, p in named.items() if p.requires_grad and id(p) in groups}
    if not trainable:
        raise ValueError("the model has no trainable parameters for the look-ahead step")
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    with torch.autocast(device_type=x.device.type, enabled=False):
        logits = _forward(model, {**named, **buffers}, x)
        loss = objective(logits)
        if loss.dim() != 0:
            raise ValueError(f"the training objective must be a scalar, got {tuple(loss.shape)}")
        grads = torch.autograd.grad(
            loss, list(trainable.values()), create_graph=True, allow_unused=True
        )
    opt_state = optimizer.state if optimizer is not None else {}
    stepped = dict(named)
    for (name, param), grad in zip(trainable.items(), grads, strict=True):
        if grad is not None:  # a parameter without gradient is skipped, as torch SGD does
            buf = opt_state.get(param, {}).get("momentum_buffer")
            stepped[name] = _virtual_sgd(param, grad, groups[id(param)], buf, config)
    return {**stepped, **buffers}


def meta_gradient(
    model: nn.Module,
    weighter: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    meta_x: torch.Tensor,
    meta_y: torch.Tensor,
    *,
    lr: float | None,
    families: torch.Tensor | None,
    num_classes: int,
    normalization: str,
    loss_fn: LossFn = cross_entropy_per_sample,
    meta_loss_fn: LossFn = cross_entropy_mean,
    optimizer: torch.optim.Optimizer | None = None,
    config: LookaheadConfig = LookaheadConfig(),
) -> MetaGradient:
    """dL^meta(theta'(Theta))/dTheta without touching any ``.grad`` or optimizer.

    x (B, ...), y (B,) or (B, C); meta_x (M, ...), meta_y (M,) or (M, C) soft;
    families (B,) task family of each training label (``None`` for MW-Net).
    loss_fn: (logits, y) -> (B,); meta_loss_fn: (logits, meta_y) -> scalar.
    """
    theta_params = [p for p in weighter.parameters() if p.requires_grad]
    if not theta_params:
        raise ValueError("the weighter has no trainable parameters to meta-learn")
    losses: list[torch.Tensor] = []

    def objective(logits: torch.Tensor) -> torch.Tensor:
        per_sample = loss_fn(logits, y)
        if per_sample.shape != (logits.shape[0],):
            raise ValueError(f"loss_fn must return (batch,), got {tuple(per_sample.shape)}")
        losses.append(per_sample.detach())
        weights = weighter(per_sample, families, num_classes)
        return reduce_weighted(per_sample, weights, normalization)

    state = lookahead(model, x, objective, lr=lr, optimizer=optimizer, config=config)
    with torch.autocast(device_type=meta_x.device.type, enabled=False):
        meta_loss = meta_loss_fn(_forward(model, state, meta_x), meta_y)
        if meta_loss.dim() != 0:
            raise ValueError(f"meta_loss_fn must return a scalar, got {tuple(meta_loss.shape)}")
        grads = torch.autograd.grad(meta_loss, theta_params, materialize_grads=True)
    return MetaGradient(float(meta_loss.detach()), tuple(grads), losses[0])


def meta_step(
    model: nn.Module,
    weighter: nn.Module,
    weighter_optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    meta_x: torch.Tensor,
    meta_y: torch.Tensor,
    *,
    lr: float | None,
    families: torch.Tensor | None,
    num_classes: int,
    normalization: str,
    loss_fn: LossFn = cross_entropy_per_sample,
    meta_loss_fn: LossFn = cross_entropy_mean,
    optimizer: torch.optim.Optimizer | None = None,
    config: LookaheadConfig = LookaheadConfig(),
) -> MetaStepResult:
    """Steps 1-3 of Algorithm 1: update Theta with ``weighter_optimizer``; theta is untouched.

    Arguments as in ``meta_gradient``. A non-finite meta loss raises ``FloatingPointError``
    and leaves Theta unchanged. The returned weights are for the look-ahead forward's
    losses; after a fresh forward (new dropout masks), weigh its losses with ``weigh``.
    """
    result = meta_gradient(
        model, weighter, x, y, meta_x, meta_y, lr=lr, families=families,
        num_classes=num_classes, normalization=normalization, loss_fn=loss_fn,
        meta_loss_fn=meta_loss_fn, optimizer=optimizer, config=config,
    )
    if not math.isfinite(result.meta_loss):
        raise FloatingPointError(f"meta loss is {result.meta_loss}; the weighter was not updated")
    weighter_optimizer.zero_grad(set_to_none=True)
    theta_params = [p for p in weighter.parameters() if p.requires_grad]
    for param, grad in zip(theta_params, result.grads, strict=True):
        param.grad = grad
    weighter_optimizer.step()
    weighter_optimizer.zero_grad(set_to_none=True)
    weights = weigh(weighter, result.losses, families, num_classes)
    return MetaStepResult(result.meta_loss, result.losses, weights)


def weigh(
    weighter: nn.Module, losses: torch.Tensor, families: torch.Tensor | None, num_classes: int
) -> torch.Tensor:
    """Weights (B,) for losses (B,) under the current weighter, without grad (step 4)."""
    with torch.no_grad():
        return weighter(losses.detach(), families, num_classes)


def _forward(model: nn.Module, state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    out = functional_call(model, state, (x,))
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the model must return a logits tensor, got {type(out).__name__}")
    return out


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
    if needs_sgd and not isinstance(optimizer, torch.optim.SGD):
        raise ValueError(
            f"momentum / weight decay in the look-ahead follow torch SGD; got {type(optimizer)}"
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
    """One differentiable torch-SGD update of ``param`` with ``grad``; ``buf`` is the real
    optimizer's momentum buffer (``None`` before its first step), read and never written."""
    d_p = -grad if group.get("maximize", False) else grad
    weight_decay = group.get("weight_decay", 0.0)
    if config.include_weight_decay and weight_decay != 0:
        d_p = d_p + weight_decay * param
    momentum = group.get("momentum", 0.0)
    if config.include_momentum and momentum != 0:
        buf = d_p if buf is None else momentum * buf + (1.0 - group["dampening"]) * d_p
        d_p = d_p + momentum * buf if group["nesterov"] else buf
    return param - group["lr"] * d_p
