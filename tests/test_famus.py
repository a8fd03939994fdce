"""FaMUS: the sampled-layer meta-gradient, its samplers and their training."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from weightzoo.bilevel.estimators import build_estimator
from weightzoo.bilevel.famus import Famus, FamusConfig, pooled_gradient
from weightzoo.bilevel.lookahead import LookaheadConfig, functional_forward, lookahead_step
from weightzoo.methods.meta_weighting import weighting_meta_gradient
from weightzoo.recipe import recipe_from_dict
from weightzoo.weighting.nets import CMWNet
from weightzoo.weighting.reduction import total_loss
from weightzoo.weighting.sample_weighting import SampleWeighting

COUNTS = [5, 5, 5, 20, 20, 20, 60, 60, 60, 60]


def conv_bn_dropout() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.2),
                         nn.Flatten(), nn.Linear(4 * 8 * 8, 16), nn.ReLU(),
                         nn.Linear(16, 10)).double().train()


def setting(seed: int = 0):
    torch.manual_seed(seed)
    model = conv_bn_dropout()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    x, y = torch.randn(16, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (16,))
    F.cross_entropy(model(x), y).backward()
    opt.step()
    opt.zero_grad()
    sw = SampleWeighting.fit(CMWNet(num_families=3).double(), COUNTS)
    mx, my = torch.randn(12, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (12,))
    return model, opt, sw, (x, y, mx, my)


def famus(model: nn.Module, force: float | None = None, **options) -> Famus:
    """A prepared FaMUS estimator; ``force``: +/- a large select logit on every sampler."""
    estimator = Famus(FamusConfig(**options), seed=3)
    estimator.prepare(model)
    if force is not None:
        with torch.no_grad():
            for sampler in estimator.samplers.values():
                sampler.net[-1].bias.copy_(torch.tensor([-force, force]))
    return estimator


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_samplers_cover_the_layers_below_the_head() -> None:
    model = conv_bn_dropout()
    assert sorted(famus(model).samplers) == ["0", "1", "5"]  # conv, BN, hidden linear; 7 = head
    deep = nn.Sequential(*[nn.Linear(2, 2) for _ in range(12)])
    assert set(famus(deep).samplers) == {str(i) for i in range(3, 11)}  # 8 below the head
    assert sorted(famus(model, candidate_layers=1).samplers) == ["5"]
    assert not famus(model, candidate_layers=0).samplers
    assert pooled_gradient(torch.ones(4, 1, 3, 3)).shape == (4,)
    assert pooled_gradient(torch.tensor(2.0)).shape == (1,)


def test_all_layers_selected_equals_the_exact_meta_gradient() -> None:
    """Every sampler forced on and no gradient matching: the exact gradient (BatchNorm,
    dropout, nesterov momentum and weight decay in the virtual step), the same global RNG
    stream, and the model untouched (parameters and BatchNorm statistics)."""
    model, opt, sw, (x, y, mx, my) = setting()
    before = snapshot(model)
    results, rng = {}, {}
    for name, estimator in (("exact", build_estimator("exact")),
                            ("famus", famus(model, force=1e3, matching_weight=0.0))):
        torch.manual_seed(5)
        results[name] = weighting_meta_gradient(
            model, sw, x, y, mx, my, lr=0.1, optimizer=opt,
            lookahead_config=LookaheadConfig(include_momentum=True, include_weight_decay=True),
            estimator=estimator)
        rng[name] = torch.get_rng_state()
        for key, value in model.state_dict().items():
            assert torch.equal(value, before[key]), key
    assert results["famus"].meta_loss == pytest.approx(results["exact"].meta_loss, rel=1e-12)
    for a, b in zip(results["exact"].grads, results["famus"].grads, strict=True):
        assert float((a - b).norm() / a.norm()) < 1e-10
    assert torch.equal(rng["exact"], rng["famus"])
    assert all(p.grad is None for p in model.parameters())


def deep_bn_model() -> nn.Module:
    """21 parameter layers: 10 Linear + BatchNorm pairs and a head (FaMUS: 8 candidates, 12 below)."""
    layers: list[nn.Module] = [nn.Flatten()]
    for width_in in (64, *[12] * 9):
        layers += [nn.Linear(width_in, 12), nn.BatchNorm1d(12), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(12, 10)).double().train()


def test_a_cut_create_graph_backward_gives_the_detached_full_one() -> None:
    """``graph_only``: the gradients below the cut from a plain backward give the same virtual
    step and meta-gradient as a full create-graph backward with those gradients detached."""
    torch.manual_seed(0)
    model = deep_bn_model()
    sw = SampleWeighting.fit(CMWNet(num_families=3).double(), COUNTS)
    x, y = torch.randn(16, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (16,))
    mx, my = torch.randn(12, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (12,))
    names = [n for n, _ in model.named_parameters()]
    top = set(names[-6:])

    def objective(logits):
        return {"ce": sw.term("ce", logits, y, grad=True)}

    def detach_below(grads):
        return {n: g if n in top else g.detach() for n, g in grads.items()}

    plain = dict(zip(names, torch.autograd.grad(total_loss(objective(model(x))), list(model.parameters())),
                     strict=True))
    results = []
    for options in ({"transform": detach_below}, {"graph_only": top}):
        state, grads = lookahead_step(model, x, objective, lr=0.1, **options)
        for name in names:  # the gradients the step took: the objective's, at theta
            torch.testing.assert_close(grads[name].detach(), plain[name], rtol=1e-12, atol=1e-14)
        meta_loss = F.cross_entropy(functional_forward(model, state, mx), my)
        results.append((state, torch.autograd.grad(meta_loss, list(sw.weighter.parameters()))))
    (full, full_grads), (cut, cut_grads) = results
    for name in names:
        assert torch.allclose(full[name], cut[name], rtol=1e-12, atol=1e-14), name
        assert cut[name].requires_grad == (name in top)
    for a, b in zip(full_grads, cut_grads, strict=True):
        assert float((a - b).norm() / a.norm()) < 1e-10


def test_famus_cuts_the_create_graph_backward_only_on_deep_models() -> None:
    """The cut is taken on deep models only, and changes neither the hyper-gradient nor the
    samplers' update."""
    model = deep_bn_model()
    names = [n for n, _ in model.named_parameters()]
    assert famus(model)._graph_only == set(names[-18:])  # 8 candidate layers (16 tensors) + the head
    assert famus(conv_bn_dropout())._graph_only is None
    sw = SampleWeighting.fit(CMWNet(num_families=3).double(), COUNTS)
    x, y = torch.randn(16, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (16,))
    mx, my = torch.randn(12, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (12,))
    results = {}
    for cut in (True, False):
        torch.manual_seed(0)  # the same sampler initialisation
        estimator = famus(model)
        if not cut:
            estimator._graph_only = None
        result = weighting_meta_gradient(model, sw, x, y, mx, my, lr=0.1, estimator=estimator)
        results[cut] = (result, estimator.samplers.state_dict())
    (cut, cut_samplers), (full, full_samplers) = results[True], results[False]
    assert cut.meta_loss == pytest.approx(full.meta_loss, rel=1e-12)
    for a, b in zip(cut.grads, full.grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)
    for key, value in cut_samplers.items():
        torch.testing.assert_close(value, full_samplers[key], rtol=1e-10, atol=1e-14)


def test_sampled_layers_change_the_gradient_and_matching_adds_to_it() -> None:
    model, opt, sw, (x, y, mx, my) = setting()

    def grads(estimator: Famus) -> torch.Tensor:
        torch.manual_seed(5)
        result = weighting_meta_gradient(model, sw, x, y, mx, my, lr=0.1, optimizer=opt, estimator=estimator)
        return torch.cat([g.flatten() for g in result.grads])

    everything = grads(famus(model, force=1e3, matching_weight=0.0))
    head_only = grads(famus(model, force=-1e3, matching_weight=0.0))
    matched = grads(famus(model, force=1e3, matching_weight=0.1))
    assert not torch.allclose(everything, head_only)
    assert not torch.allclose(everything, matched)
    assert head_only.abs().sum() > 0  # the head alone still carries a meta-gradient


def test_samplers_learn_and_the_sparsity_term_steers_the_count() -> None:
    """The samplers are trained each call; a strong sparsity term moves the number of
    selected layers toward K (3 candidates here)."""
    model, opt, sw, (x, y, mx, my) = setting()
    counts = {}
    for k in (0, 3):
        estimator = famus(model, sparsity_weight=5.0, expected_layers=k)
        start = copy.deepcopy(estimator.samplers.state_dict())
        for _ in range(30):
            weighting_meta_gradient(model, sw, x, y, mx, my, lr=0.1, optimizer=opt, estimator=estimator)
        estimator.take_metrics()
        for _ in range(10):
            weighting_meta_gradient(model, sw, x, y, mx, my, lr=0.1, optimizer=opt, estimator=estimator)
        counts[k] = estimator.take_metrics()["famus_layers"] - 1  # the head is always on
        assert any(not torch.equal(v, start[n]) for n, v in estimator.samplers.state_dict().items())
        assert estimator.take_metrics() == {}
    assert counts[0] <= 0.5 and counts[3] >= 2.5, counts


def test_state_round_trip_continues_identically() -> None:
    model, opt, sw, (x, y, mx, my) = setting()
    first = famus(model)
    for _ in range(3):
        weighting_meta_gradient(model, sw, x, y, mx, my, lr=0.1, optimizer=opt, estimator=first)
    second = Famus(FamusConfig(), seed=99)
    second.prepare(model)
    second.load_state_dict(copy.deepcopy(first.state_dict()))
    torch.manual_seed(5)  # the same dropout masks
    a = weighting_meta_gradient(model, sw, x, y, mx, my, lr=0.1, optimizer=opt, estimator=first)
    torch.manual_seed(5)
    b = weighting_meta_gradient(model, sw, x, y, mx, my, lr=0.1, optimizer=opt, estimator=second)
    for g, h in zip(a.grads, b.grads, strict=True):
        assert torch.equal(g, h)
    for key, value in first.samplers.state_dict().items():
        assert torch.equal(value, second.samplers.state_dict()[key])


def test_config_errors_and_recipe_choice() -> None:
    for bad in ({"expected_layers": -1}, {"sampler_momentum": 1.0}, {"temperature": 0.0},
                {"candidate_layers": -2}, {"matching_weight": -0.1}):
        with pytest.raises(ValueError, match="meta.famus"):
            FamusConfig(**bad)
    recipe = recipe_from_dict({
        "method": {"name": "mwnet", "estimator": "famus",
                   "meta": {"famus": {"expected_layers": 2, "candidate_layers": 3}}},
    })
    assert recipe.method.config.estimator == "famus"
    assert recipe.method.config.meta.famus == FamusConfig(expected_layers=2, candidate_layers=3)
    estimator = build_estimator("famus", recipe.method.config.meta, seed=1)
    assert isinstance(estimator, Famus) and estimator.config.expected_layers == 2
    with pytest.raises(ValueError, match="meta.famus.hidden"):
        recipe_from_dict({"method": {"name": "mwnet", "meta": {"famus": {"hidden": 0}}}})
