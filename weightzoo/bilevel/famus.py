"""FaMUS (Xu et al., CVPR 2021): the meta-gradient through a sampled subset of layers.

The exact meta-gradient differentiates the meta loss at theta' = theta - lr g(hyper)
through every layer's training gradient g_l. FaMUS keeps that path only for some layers:
a learned *gradient sampler* per candidate layer (FaMUS §3.2, Fig. 2) reads the layer's
training gradient, average-pooled over all dimensions but the first (an (out,) vector,
standardised here so that the sampler sees its shape, not its scale), through FC(hidden)
-> PReLU -> FC(2) and draws a hard gate r_l in {0, 1} by straight-through Gumbel-softmax.
The virtual step is the full step always (theta' does not change); a layer with r_l = 0
takes its gradient detached, so the second-order backward skips it, and the lower a
selected layer the more of the backward graph it costs.

The layers: every module that holds parameters (a convolution and its BatchNorm are two);
the last (the classifier head) is always differentiated through, as in the reference
implementation; the ``candidate_layers`` layers below it (8 by default, about the
reference's ``top_k`` = 15 parameter tensors of a ResNet) get samplers; the layers under
those are always detached, so the second-order backward never goes below the candidates.
When those lower layers outnumber the head and the candidates (a deep model), their
gradients come from a plain backward and only the top's from the create-graph one, which
then stops at the candidates (``lookahead_step``'s ``graph_only``: same values, less recorded).

The samplers are trained on FaMUS Eq. 12, L = L^meta + lambda_1 L_r + lambda_2 L_g, with
SGD (lr 0.1, momentum 0.9), after each meta step:
- L_r = (sum_l r_l - K)^2 keeps about K candidate layers selected (``expected_layers``);
- d L^meta / d r_l = -lr c <g^meta_l, g_l> (g^meta_l = dL^meta/dtheta'_l): both gate states
  carry this straight-through derivative (each gradient is multiplied by 1 + r_l - sg(r_l),
  value 1), so a sampler learns to select the layers whose training and meta gradients
  align. (The reference code flips the sign for unselected layers; the paper does not say.)
- L_g, the gradient-matching term on the head: per head parameter, the mean squared
  difference of the per-output-unit mean and std of the training gradient and of the meta
  gradient dL^meta/dtheta'_head (detached), as the reference implementation computes the
  paper's pooled-gradient distance. It trains the meta-learned hyper-parameters (the
  weighter) alongside L^meta: the hyper-gradient returned is d(L^meta + lambda_2 L_g)/d hyper.

With every candidate selected and ``matching_weight`` 0 the result is the ``exact``
estimator's gradient (tested). One process only (the create-graph backward).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from weightzoo.bilevel.estimators import (
    BilevelProblem,
    MetaGradient,
    MetaGradientEstimator,
    ObjectiveCalls,
    kept_forward,
    register_estimator,
    require_single_process,
    scalar_meta_loss,
)
from weightzoo.bilevel.lookahead import functional_forward, lookahead_step, parameter_layers


@dataclass
class FamusConfig:
    """FaMUS options (the recipe's ``[meta.famus]`` table; defaults: the paper's).

    expected_layers: K of the sparsity term, candidate layers selected on average (the head
        is always on and not counted); candidate_layers: how many layers below the head get
        samplers (None: all of them); sparsity_weight / matching_weight: lambda_1 / lambda_2 of Eq. 12;
    sampler_lr / sampler_momentum: the samplers' SGD; hidden: a sampler's hidden width;
    temperature: the Gumbel-softmax temperature.
    """

    expected_layers: int = 4
    candidate_layers: int | None = 8
    sparsity_weight: float = 0.1
    matching_weight: float = 0.1
    sampler_lr: float = 0.1
    sampler_momentum: float = 0.9
    hidden: int = 128
    temperature: float = 5.0

    def __post_init__(self) -> None:
        if self.expected_layers < 0:
            raise ValueError("meta.famus.expected_layers must be >= 0")
        if self.candidate_layers is not None and self.candidate_layers < 0:
            raise ValueError("meta.famus.candidate_layers must be >= 0 (or absent: all)")
        if min(self.sparsity_weight, self.matching_weight, self.sampler_lr) < 0:
            raise ValueError("meta.famus weights and sampler_lr must be >= 0")
        if not 0.0 <= self.sampler_momentum < 1.0:
            raise ValueError("meta.famus.sampler_momentum must be in [0, 1)")
        if self.hidden < 1 or not self.temperature > 0:
            raise ValueError("meta.famus.hidden must be >= 1 and temperature > 0")


class GradientSampler(nn.Module):
    """One layer's sampler: pooled gradient (D,) -> logits (2,) of (skip, select)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.PReLU(), nn.Linear(hidden, 2))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.net(pooled)


def pooled_gradient(grad: torch.Tensor) -> torch.Tensor:
    """A layer's gradient (D, ...) averaged over every dimension but the first: (D,)."""
    return grad.reshape(grad.shape[0], -1).mean(dim=1) if grad.dim() > 0 else grad.reshape(1)


def gradient_mismatch(train: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    """The gradient-matching loss of one head parameter (as the reference implementation):
    the mean squared difference of the per-output-unit mean and std of the two gradients
    (of the whole tensor for a vector)."""
    def moments(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = grad.reshape(grad.shape[0], -1) if grad.dim() > 1 else grad.reshape(1, -1)
        return rows.mean(dim=1), rows.std(dim=1, correction=0)

    (train_mean, train_std), (meta_mean, meta_std) = moments(train), moments(meta)
    return ((train_mean - meta_mean) ** 2 + (train_std - meta_std) ** 2).mean()


def _standardised(values: torch.Tensor) -> torch.Tensor:
    centred = values - values.mean()
    return centred / (centred.norm() / math.sqrt(max(values.numel(), 1)) + 1e-12)


@register_estimator
class Famus(MetaGradientEstimator):
    """The FaMUS meta-gradient (see the module docstring); learned state: the samplers,
    their optimizer and the Gumbel noise generator (checkpointed)."""

    name = "famus"

    def __init__(self, config: FamusConfig | None = None, seed: int = 0) -> None:
        self.config = config or FamusConfig()
        self.generator = torch.Generator().manual_seed(seed)
        self.samplers = nn.ModuleDict()
        self.optimizer: torch.optim.Optimizer | None = None
        self._reads: dict[str, str] = {}  # sampler key -> the parameter whose gradient it reads
        self._layer_of: dict[str, str] = {}  # parameter name -> its layer's key
        self._head: list[str] = []  # the head's parameter names
        self._graph_only: set[str] | None = None  # the parameters whose gradient keeps its graph
        self._selected: list[float] = []

    @classmethod
    def from_config(cls, meta: Any, seed: int) -> Famus:
        return cls(getattr(meta, "famus", None), seed)

    def prepare(self, model: nn.Module) -> None:
        """One sampler per candidate layer, on the model's device and dtype."""
        named = dict(model.named_parameters())
        layers = [(prefix, names) for prefix, names in parameter_layers(model)
                  if any(named[n].requires_grad for n in names)]
        *below, (_, self._head) = layers
        count = len(below) if self.config.candidate_layers is None else self.config.candidate_layers
        candidates = below[len(below) - min(count, len(below)):]
        self._layer_of = {name: _key(prefix) for prefix, names in layers for name in names}
        self._reads = {_key(prefix): names[0] for prefix, names in candidates}
        lower = len(below) - len(candidates)
        self._graph_only = ({name for _, names in candidates for name in names} | set(self._head)
                            if lower > len(candidates) + 1 else None)
        reference = next(model.parameters())
        self.samplers = nn.ModuleDict({
            key: GradientSampler(pooled_gradient(named[name].detach()).numel(), self.config.hidden)
            for key, name in self._reads.items()
        }).to(device=reference.device, dtype=reference.dtype)
        self.optimizer = torch.optim.SGD(self.samplers.parameters(), lr=self.config.sampler_lr,
                                         momentum=self.config.sampler_momentum) if self.samplers else None

    def _gates(self, grads: dict[str, torch.Tensor | None]) -> dict[str, torch.Tensor]:
        """Candidate layer key -> straight-through hard gate r (value 0 or 1, graph to its
        sampler); the Gumbel noise of all samplers is drawn at once."""
        present = {key: grads[name] for key, name in self._reads.items() if grads.get(name) is not None}
        if not present:
            return {}
        uniform = torch.rand(len(present), 2, generator=self.generator, dtype=torch.float64)
        gumbel = -torch.log(-torch.log(uniform.clamp(1e-12, 1 - 1e-12)))
        gumbel = gumbel.to(next(iter(present.values())))
        gates = {}
        for noise, (key, grad) in zip(gumbel, present.items(), strict=True):
            logits = self.samplers[key](_standardised(pooled_gradient(grad.detach())))
            soft = F.softmax((logits + noise) / self.config.temperature, dim=-1)
            hard = F.one_hot(soft.argmax(), 2).to(soft)
            gates[key] = (hard - soft.detach() + soft)[1]
        return gates

    def __call__(self, problem: BilevelProblem) -> MetaGradient:
        require_single_process(self.name)
        if not self._head:
            self.prepare(problem.model)
        seen = ObjectiveCalls(problem.objective)
        captured: dict[str, Any] = {}
        head_key = self._layer_of[self._head[0]]

        def gate(grads: dict[str, torch.Tensor | None]) -> dict[str, torch.Tensor | None]:
            gates = self._gates(grads)
            values = torch.stack(list(gates.values())).tolist() if gates else []  # one host sync
            chosen = dict(zip(gates, values, strict=True))
            captured.update(gates=gates, chosen=chosen, heads={n: grads.get(n) for n in self._head})
            out: dict[str, torch.Tensor | None] = {}
            for name, grad in grads.items():
                key = self._layer_of.get(name)
                if grad is None or key == head_key:
                    out[name] = grad
                elif key in gates:
                    kept = grad if chosen[key] > 0.5 else grad.detach()
                    out[name] = kept * (gates[key] - gates[key].detach()).add(1)
                else:
                    out[name] = grad.detach()
            return out

        state, step_grads = lookahead_step(
            problem.model, problem.x, seen, lr=problem.lr, optimizer=problem.optimizer,
            config=problem.lookahead_config, transform=gate, graph_only=self._graph_only,
        )
        kept = kept_forward(problem, seen, state, step_grads)
        gates: dict[str, torch.Tensor] = captured["gates"]
        with torch.autocast(device_type=problem.meta_x.device.type, enabled=False):
            logits = functional_forward(problem.model, state, problem.meta_x)
            meta_loss = scalar_meta_loss(problem, logits)
            total = meta_loss
            if gates:
                total = total + self.config.sparsity_weight * (
                    sum(gates.values()) - min(self.config.expected_layers, len(gates))) ** 2
            if self.config.matching_weight > 0:
                heads = [name for name in self._head if captured["heads"].get(name) is not None]
                meta_heads = torch.autograd.grad(meta_loss, [state[n] for n in heads], retain_graph=True)
                total = total + self.config.matching_weight * sum(
                    gradient_mismatch(captured["heads"][n], g.detach())
                    for n, g in zip(heads, meta_heads, strict=True))
            sampler_params = list(self.samplers.parameters())
            grads = torch.autograd.grad(total, [*problem.hyper_params, *sampler_params],
                                        materialize_grads=True, allow_unused=True,
                                        retain_graph=problem.real_backward)
        hyper, sampler = grads[:len(problem.hyper_params)], grads[len(problem.hyper_params):]
        value = float(meta_loss.detach())
        if math.isfinite(value) and self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
            for param, grad in zip(sampler_params, sampler, strict=True):
                param.grad = grad
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self._selected.append(1.0 + sum(captured["chosen"].values()))
        return MetaGradient(value, tuple(hyper), kept)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"samplers": self.samplers.state_dict(),
                                 "generator": self.generator.get_state()}
        if self.optimizer is not None:
            state["optimizer"] = self.optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        assert self._head, "prepare() was not called"
        self.samplers.load_state_dict(state["samplers"])
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])

    def take_metrics(self) -> dict[str, float]:
        """``famus_layers``: mean layers differentiated through per meta step (head included)."""
        selected, self._selected = self._selected, []
        return {"famus_layers": sum(selected) / len(selected)} if selected else {}


def _key(prefix: str) -> str:
    """A module name as a ``ModuleDict`` key (no dots; the root module is ``_root``)."""
    return prefix.replace(".", "__") or "_root"
