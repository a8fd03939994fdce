import copy
import math

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from weightzoo.bilevel.estimators import BilevelProblem, build_estimator, fastest_exact_estimator
from weightzoo.bilevel.lookahead import LookaheadConfig, last_layer_parameters, lookahead
from weightzoo.bilevel.metaset import ModelEMA, balanced_clean_indices, lowest_loss_indices
from weightzoo.methods.meta_weighting import weighting_meta_gradient, weighting_meta_step
from weightzoo.training.views import mixup
from weightzoo.weighting.families import TaskFamilies
from weightzoo.weighting.nets import CMWNet, MWNet
from weightzoo.weighting.reduction import LossTerm, reduce_weighted
from weightzoo.weighting.sample_weighting import SampleWeighting

BOTH = LookaheadConfig(include_momentum=True, include_weight_decay=True)


def ce_term(y: torch.Tensor):
    """Objective: the plain mean CE as one named loss term."""
    return lambda logits: {"ce": LossTerm(F.cross_entropy(logits, y, reduction="none"))}


def weighting(weighter, num_classes: int, family_of_class: list[int] | None = None):
    """A SampleWeighting whose class c is in family ``family_of_class[c]``."""
    if family_of_class is None:
        return SampleWeighting(weighter, None, num_classes)
    fams = TaskFamilies(tuple(float(k) for k in range(weighter.num_families)),
                        torch.tensor(family_of_class), tuple([1] * len(family_of_class)))
    return SampleWeighting(weighter, fams, num_classes)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def bn_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


# --- meta step -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mwnet", "cmwnet"])
def test_meta_step_updates_weighter_only(kind: str) -> None:
    torch.manual_seed(0)
    model = bn_mlp().train()
    weighter = MWNet() if kind == "mwnet" else CMWNet(num_families=3)
    sw = weighting(weighter, 3, [0, 2, 1] if kind == "cmwnet" else None)
    w_before = copy.deepcopy(weighter.state_dict())
    before = snapshot(model)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    mx, my = torch.randn(6, 6), torch.randint(0, 3, (6,))
    meta_loss = weighting_meta_step(
        model, sw, torch.optim.Adam(weighter.parameters(), lr=1e-2), x, y, mx, my, lr=0.5,
    ).meta_loss
    assert_same_state(model, before)  # incl. BN running stats and num_batches_tracked
    assert all(p.grad is None for p in model.parameters())
    assert all(p.grad is None for p in weighter.parameters())
    changed = [not torch.equal(v, w_before[k]) for k, v in weighter.state_dict().items()]
    assert all(changed)
    weights = sw.weights(F.cross_entropy(model(x), y, reduction="none"), y)
    assert weights.shape == (8,) and not weights.requires_grad
    assert meta_loss > 0


def hand_meta_loss(weighter, model, opt, x, y, mx, my, lr, norm, momentum, nesterov):
    """The look-ahead written out by hand for a Linear model: returns L^meta(theta')."""
    W = model.weight.detach().clone().requires_grad_(True)
    b = model.bias.detach().clone().requires_grad_(True)
    losses = F.cross_entropy(x @ W.T + b, y, reduction="none")
    v = weighter(losses, None, 3)
    objective = (v * losses).sum() / v.sum() if norm == "sum" else (v * losses).mean()
    grads = torch.autograd.grad(objective, [W, b])
    new = []
    for real, p, g in zip([model.weight, model.bias], [W, b], grads, strict=True):
        if momentum:
            group = opt.param_groups[0]
            d = g + group["weight_decay"] * p
            buf = group["momentum"] * opt.state[real]["momentum_buffer"]
            buf = buf + (1 - group["dampening"]) * d
            d = d + group["momentum"] * buf if nesterov else buf
        else:
            d = g
        new.append(p - lr * d)
    return F.cross_entropy(mx @ new[0].T + new[1], my).item()


@pytest.mark.parametrize("norm", ["sum", "mean"])
@pytest.mark.parametrize("momentum,nesterov", [(False, False), (True, False), (True, True)])
def test_meta_gradient_matches_finite_differences(norm: str, momentum: bool, nesterov: bool):
    torch.manual_seed(1)
    model = nn.Linear(4, 3).double()
    weighter = MWNet().double()
    x, y = torch.randn(10, 4, dtype=torch.float64), torch.randint(0, 3, (10,))
    mx, my = torch.randn(7, 4, dtype=torch.float64), torch.randint(0, 3, (7,))
    opt = torch.optim.SGD(
        model.parameters(), lr=0.5, momentum=0.9, weight_decay=0.05,
        dampening=0.0 if nesterov else 0.2, nesterov=nesterov,
    )
    F.cross_entropy(model(x), y).backward()  # one real step fills the momentum buffers
    opt.step()
    opt.zero_grad(set_to_none=True)
    config = BOTH if momentum else LookaheadConfig()
    lr = 0.5
    weighter = MWNet(normalization=norm).double()
    result = weighting_meta_gradient(
        model, weighting(weighter, 3), x, y, mx, my, lr=lr, optimizer=opt, lookahead_config=config,
    )
    args = (weighter, model, opt, x, y, mx, my, lr, norm, momentum, nesterov)
    assert result.meta_loss == pytest.approx(hand_meta_loss(*args), rel=1e-12)
    params = list(weighter.parameters())  # shared.0.weight, shared.0.bias, heads.weight, .bias
    eps = 1e-6
    checked = 0
    for p_index, entry in [(0, 3), (1, 7), (2, 11), (2, 40), (3, 0)]:
        param, grad = params[p_index], result.grads[p_index]
        flat = param.data.view(-1)
        orig = flat[entry].item()
        flat[entry] = orig + eps
        up = hand_meta_loss(*args)
        flat[entry] = orig - eps
        down = hand_meta_loss(*args)
        flat[entry] = orig
        fd = (up - down) / (2 * eps)
        assert grad.view(-1)[entry].item() == pytest.approx(fd, rel=1e-5, abs=1e-10)
        checked += abs(fd) > 1e-8
    assert checked >= 3  # the check is not vacuous


SGD_CASES = [
    dict(momentum=0.0, weight_decay=0.0),
    dict(momentum=0.9, weight_decay=1e-2),
    dict(momentum=0.9, dampening=0.3, weight_decay=1e-2),
    dict(momentum=0.8, nesterov=True, weight_decay=5e-3),
    dict(momentum=0.9, weight_decay=1e-2, maximize=True),
]


@pytest.mark.parametrize("sgd", SGD_CASES)
@pytest.mark.parametrize("prior_steps", [0, 2])
def test_lookahead_reproduces_the_real_sgd_step(sgd: dict, prior_steps: int) -> None:
    torch.manual_seed(2)
    model = bn_mlp().double().train()
    model[0].bias.requires_grad_(False)  # frozen: not part of theta'
    head, body = list(model[3].parameters()), [model[0].weight, *model[1].parameters()]
    opt = torch.optim.SGD([{"params": body}, {"params": head, "lr": 0.05}], lr=0.1, **sgd)
    x, y = torch.randn(8, 6, dtype=torch.float64), torch.randint(0, 3, (8,))
    for _ in range(prior_steps):
        F.cross_entropy(model(torch.randn_like(x)), y).backward()
        opt.step()
        opt.zero_grad()
    buffers = snapshot(model)
    state = lookahead(model, x, ce_term(y), lr=None, optimizer=opt, config=BOTH)
    assert_same_state(model, buffers)
    F.cross_entropy(model(x), y).backward()
    opt.step()
    for name, param in model.named_parameters():
        assert torch.equal(state[name], param), name  # the real optimizer's own arithmetic
    assert torch.equal(state["0.bias"], buffers["0.bias"])


def test_lookahead_skips_parameters_outside_the_optimizer() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    opt = torch.optim.SGD(model[1].parameters(), lr=0.1)
    x, y = torch.randn(5, 3), torch.randint(0, 2, (5,))
    state = lookahead(model, x, ce_term(y), lr=0.1, optimizer=opt)
    assert state["0.weight"] is model[0].weight
    assert not torch.equal(state["1.weight"], model[1].weight)


def test_lookahead_errors() -> None:
    model = nn.Linear(3, 2)
    x, y = torch.randn(4, 3), torch.randint(0, 2, (4,))
    objective = ce_term(y)
    with pytest.raises(ValueError, match="optimizer="):
        lookahead(model, x, objective, lr=0.1, config=BOTH)
    with pytest.raises(ValueError, match="optimizer="):
        lookahead(model, x, objective, lr=None)
    adam = torch.optim.Adam(model.parameters())
    with pytest.raises(ValueError, match="torch SGD"):
        lookahead(model, x, objective, lr=0.1, optimizer=adam, config=BOTH)
    with pytest.raises(TypeError, match="named loss terms"):
        lookahead(model, x, lambda z: F.cross_entropy(z, y), lr=0.1)
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        lookahead(model, x, objective, lr=0.1)


def test_meta_step_on_torchvision_resnet() -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(3)
    model = torchvision.models.resnet18(num_classes=3).train()
    before = snapshot(model)
    weighter = MWNet()
    w_before = snapshot(weighter)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
    weighter = MWNet(normalization="mean")
    w_before = snapshot(weighter)
    weighting_meta_step(
        model, weighting(weighter, 3), torch.optim.Adam(weighter.parameters(), lr=1e-2), x, y,
        torch.randn(2, 3, 32, 32), torch.tensor([1, 2]), lr=0.1,
    )
    assert_same_state(model, before)
    assert all(p.grad is None for p in model.parameters())
    assert any(not torch.equal(v, w_before[k]) for k, v in weighter.state_dict().items())


def test_meta_step_with_dropout_and_soft_meta_targets() -> None:
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 4)).train()
    weighter = CMWNet(num_families=2, normalization="detached_sum")
    before = snapshot(model)
    mx, my_soft = mixup(torch.randn(6, 5), F.one_hot(torch.arange(6) % 4, 4).float())
    meta_loss = weighting_meta_step(
        model, weighting(weighter, 4, [0, 1, 1, 0]), torch.optim.Adam(weighter.parameters(), lr=1e-3),
        torch.randn(9, 5), torch.randint(0, 4, (9,)), mx, my_soft, lr=0.1,
    ).meta_loss
    assert_same_state(model, before)
    assert math.isfinite(meta_loss)


def test_meta_step_rejects_a_non_finite_meta_loss() -> None:
    model, weighter = nn.Linear(3, 2), MWNet()
    w_before = snapshot(weighter)
    nan_meta = torch.full((2, 3), float("nan"))
    with pytest.raises(FloatingPointError, match="not updated"):
        weighting_meta_step(
            model, weighting(weighter, 2), torch.optim.Adam(weighter.parameters()), torch.randn(4, 3),
            torch.randint(0, 2, (4,)), nan_meta, torch.tensor([0, 1]), lr=0.1,
        )
    assert_same_state(weighter, w_before)


@pytest.mark.slow
def test_mwnet_learns_a_decreasing_weighting_under_label_noise() -> None:
    """A few hundred meta steps on load_digits with 40% symmetric noise and a clean
    meta set of 10 per class: small losses end up weighted above large ones."""
    torch.manual_seed(0)
    digits = load_digits()
    x_all = torch.tensor(digits.data, dtype=torch.float32)
    x_all = (x_all - x_all.mean(0)) / (x_all.std(0) + 1.0)
    y_all = torch.tensor(digits.target)
    meta = balanced_clean_indices(y_all, per_class=10, seed=0)
    train = torch.ones(len(y_all), dtype=torch.bool)
    train[meta] = False
    x, y = x_all[train], y_all[train].clone()
    gen = torch.Generator().manual_seed(0)
    noisy = torch.rand(len(y), generator=gen) < 0.4
    y[noisy] = torch.randint(0, 10, (int(noisy.sum()),), generator=gen)

    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    weighter = MWNet()
    sw = weighting(weighter, 10)
    weighter_opt = torch.optim.Adam(weighter.parameters(), lr=1e-3)
    steps = 0
    while steps < 200:
        for batch in torch.randperm(len(y)).split(100):
            weighting_meta_step(
                model, sw, weighter_opt, x[batch], y[batch], x_all[meta], y_all[meta],
                lr=opt.param_groups[0]["lr"],
            )
            losses = F.cross_entropy(model(x[batch]), y[batch], reduction="none")
            loss = reduce_weighted(losses, sw.weights(losses, y[batch]), "sum")
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1

    curve = weighter.curve(torch.tensor([0.1, 1.0, 3.0]), num_classes=10)[:, 0]
    assert curve[0] > curve[1] > curve[2]
    assert curve[0] > 2 * curve[2]
    with torch.no_grad():
        weights = sw.weights(F.cross_entropy(model(x), y, reduction="none"), y)
    assert weights[~noisy].mean() > 2 * weights[noisy].mean()


# --- meta sets -------------------------------------------------------------------------


def test_balanced_clean_indices() -> None:
    labels = torch.tensor([0] * 20 + [1] * 5 + [2] * 12)[torch.randperm(37)]
    idx = balanced_clean_indices(labels, per_class=10, seed=3)
    assert torch.equal(idx, idx.sort().values) and idx.unique().numel() == idx.numel()
    assert torch.bincount(labels[idx]).tolist() == [10, 5, 10]
    assert torch.equal(idx, balanced_clean_indices(labels, per_class=10, seed=3))
    assert not torch.equal(idx, balanced_clean_indices(labels, per_class=10, seed=4))
    with pytest.raises(ValueError):
        balanced_clean_indices(labels, per_class=0)


def test_lowest_loss_indices_pick_clean_samples_and_restore_modes() -> None:
    torch.manual_seed(5)
    centres = torch.tensor([[4.0, 0.0], [0.0, 4.0]])
    true = torch.arange(40) % 2
    x = centres[true] + 0.3 * torch.randn(40, 2)
    noisy = true.clone()
    flipped = torch.tensor([0, 3, 6, 9, 12, 15, 18, 21])
    noisy[flipped] = 1 - noisy[flipped]
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5), nn.BatchNorm1d(2))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(2))
        model[0].bias.zero_()
    model.train()
    model[1].eval()  # mixed modes must come back as they were
    before = snapshot(model)
    idx = lowest_loss_indices(model, x, noisy, per_class=5, batch_size=7)
    assert idx.numel() == 10 and torch.bincount(noisy[idx]).tolist() == [5, 5]
    assert not set(idx.tolist()) & set(flipped.tolist())
    assert model.training and model[2].training and not model[1].training
    assert_same_state(model, before)


def test_model_ema_update_math() -> None:
    """d = min(decay, 1 - 1/(t + 1)) at the t-th update (the Mean Teacher ramp): the first
    update copies the model, the second averages the two equally, ..., then the decay."""
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    ema = ModelEMA(model, decay=0.9)
    assert not ema.module.training
    assert not any(p.requires_grad for p in ema.module.parameters())
    ramp = [0.0, 1 / 2, 2 / 3, 3 / 4, 4 / 5, 5 / 6, 6 / 7, 7 / 8, 8 / 9]  # 1 - 1/(t+1) < 0.9
    for t, expected_decay in enumerate(ramp + [0.9] * 4):
        old = snapshot(ema.module)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        model.train()(torch.randn(4, 2))  # moves BN statistics, counts one batch
        ema.update(model)
        new = model.state_dict()
        for key, value in ema.module.state_dict().items():
            if value.is_floating_point():
                want = expected_decay * old[key] + (1 - expected_decay) * new[key]
                assert torch.allclose(value, want), (t, key)
            else:
                assert torch.equal(value, new[key]), key
        assert ema.updates == t + 1
    assert int(ema.module[1].num_batches_tracked) == 13
    resumed = ModelEMA(model, decay=0.9)
    resumed.load_state_dict(ema.state_dict())
    assert resumed.updates == 13
    assert_same_state(resumed.module, snapshot(ema.module))


def test_mixup_is_a_convex_combination() -> None:
    eye = torch.eye(8)
    gen = torch.Generator().manual_seed(0)
    x_mixed, y_mixed = mixup(eye.clone(), eye.clone(), alpha=1.0, generator=gen)
    assert x_mixed.shape == (8, 8) and y_mixed.shape == (8, 8)
    assert torch.equal(x_mixed, y_mixed)  # the same lambda and permutation for x and y
    assert torch.allclose(y_mixed.sum(1), torch.ones(8))
    assert ((y_mixed >= 0) & (y_mixed <= 1)).all()
    lam = y_mixed.diagonal()
    assert torch.allclose(lam[lam < 1], lam[lam < 1][0].expand(int((lam < 1).sum())))
    gen = torch.Generator().manual_seed(0)
    again, _ = mixup(eye.clone(), eye.clone(), generator=gen)
    assert torch.equal(again, x_mixed)
    lams = []
    for _ in range(300):
        mixed, _ = mixup(eye, eye, dominant=True, generator=gen)
        lams.append(float(mixed.diagonal().min()))
    assert min(lams) >= 0.5
    with pytest.raises(ValueError, match="y_soft"):
        mixup(eye, torch.arange(8))


def test_mixup_lambda_follows_beta() -> None:
    gen = torch.Generator().manual_seed(1)
    eye = torch.eye(8, dtype=torch.float64)
    lams = []
    for _ in range(2000):
        _, y_mixed = mixup(eye, eye, alpha=0.2, generator=gen)
        lams.append(float(y_mixed.diagonal().min()))  # lambda of any non-fixed row
    lams_t = torch.tensor(lams)
    # Beta(0.2, 0.2) is U-shaped (mass near 0 and 1), unlike Beta(1, 1).
    assert 0.45 < float(((lams_t < 0.1) | (lams_t > 0.9)).float().mean()) < 0.85


# --- meta-gradient estimators ------------------------------------------------------------


def conv_bn_dropout(dtype: torch.dtype) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.2),
                         nn.Flatten(), nn.Linear(4 * 8 * 8, 10)).to(dtype).train()


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("norm", ["sum", "mean", "detached_sum"])
@pytest.mark.parametrize("config", [LookaheadConfig(), BOTH], ids=["plain", "momentum+wd"])
def test_jvp_estimator_equals_the_second_order_gradient(dtype, rtol, norm, config) -> None:
    """One JVP instead of the double backward: the same weighter gradient, with BatchNorm and
    dropout in the model, nesterov momentum and weight decay in the virtual step, and the
    same RNG stream afterwards."""
    torch.manual_seed(0)
    model = conv_bn_dropout(dtype)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    x, y = torch.randn(16, 1, 8, 8, dtype=dtype), torch.randint(0, 10, (16,))
    F.cross_entropy(model(x), y).backward()
    opt.step()
    opt.zero_grad()
    sw = SampleWeighting.fit(CMWNet(num_families=3, normalization=norm).to(dtype),
                             [5, 5, 5, 20, 20, 20, 60, 60, 60, 60])
    mx, my = torch.randn(12, 1, 8, 8, dtype=dtype), torch.randint(0, 10, (12,))
    before = snapshot(model)
    results, rng = {}, {}
    for name in ("exact", "jvp"):
        torch.manual_seed(5)
        results[name] = weighting_meta_gradient(model, sw, x, y, mx, my, lr=0.1, optimizer=opt,
                                                lookahead_config=config, estimator=build_estimator(name))
        rng[name] = torch.get_rng_state()
        assert_same_state(model, before)
    exact, jvp = results["exact"], results["jvp"]
    assert exact.meta_loss == pytest.approx(jvp.meta_loss, rel=1e-12)
    for a, b in zip(exact.grads, jvp.grads, strict=True):
        assert float((a - b).norm() / a.norm()) < rtol
    assert torch.equal(rng["exact"], rng["jvp"])


def test_jvp_takes_any_objective_and_auto_picks_by_model() -> None:
    """A soft-label objective with two weight vectors (v on the given label, 1 - v on a soft
    label), as the SL loss has, and a meta-learned scale on the soft term: both agree."""
    torch.manual_seed(3)
    model = bn_mlp().double().train()
    x, y, soft = torch.randn(10, 6, dtype=torch.float64), torch.randint(0, 3, (10,)), torch.rand(10, 3)
    soft = (soft / soft.sum(1, keepdim=True)).double()
    weighter = CMWNet(num_families=1, hidden=16).double()
    scale = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)

    def objective(logits: torch.Tensor) -> dict[str, LossTerm]:
        hard = F.cross_entropy(logits, y, reduction="none")
        pseudo = -(soft * F.log_softmax(logits, 1)).sum(1)
        v = weighter(hard, None, 3)
        return {"hard": LossTerm(hard, v, "mean"), "soft": LossTerm(pseudo * scale, 1 - v, "mean")}

    params = [*weighter.parameters(), scale]
    problem = BilevelProblem(model=model, x=x, objective=objective, meta_x=torch.randn(6, 6).double(),
                             meta_y=torch.randint(0, 3, (6,)), meta_loss_fn=F.cross_entropy,
                             hyper_params=params, lr=0.2)
    exact, jvp = build_estimator("exact")(problem), build_estimator("jvp")(problem)
    for a, b in zip(exact.grads, jvp.grads, strict=True):
        assert float((a - b).norm() / a.norm()) < 1e-12
    unused = BilevelProblem(model=model, x=x, objective=ce_term(y), meta_x=problem.meta_x,
                            meta_y=problem.meta_y, meta_loss_fn=problem.meta_loss_fn,
                            hyper_params=[torch.zeros(1, requires_grad=True)], lr=0.1)
    with pytest.raises(ValueError, match="does not depend on both"):
        build_estimator("jvp")(unused)
    assert fastest_exact_estimator(bn_mlp()) == "jvp"
    assert fastest_exact_estimator(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))) == "exact"
    with pytest.raises(ValueError, match="unknown meta-gradient estimator"):
        build_estimator("magic")


@pytest.mark.parametrize("name", ["exact", "jvp"])
def test_kept_forward_is_the_real_forward(name: str) -> None:
    """The look-ahead's forward at theta, kept for the real step: the same logits and
    gradient as a fresh forward, and the buffers a fresh forward would leave."""
    torch.manual_seed(0)
    model = bn_mlp().train()
    fresh = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    sw = weighting(MWNet(), 3)
    result = weighting_meta_gradient(model, sw, x, y, torch.randn(5, 6), torch.randint(0, 3, (5,)),
                                     lr=0.1, optimizer=opt, estimator=build_estimator(name),
                                     keep_forward=True)
    assert result.forward is not None
    result.forward.restore_buffers(model)
    logits = fresh(x)
    assert torch.equal(result.forward.logits, logits)
    assert_same_state(model, snapshot(fresh))  # BN running stats advanced exactly once
    F.cross_entropy(result.forward.logits, y).backward()
    F.cross_entropy(logits, y).backward()
    for p, q in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad)


def test_last_layer_estimator_is_exact_when_only_the_head_learns() -> None:
    """The cheap baseline moves only the head in the virtual step; with the body frozen that
    is the whole step, so it equals the exact estimator; otherwise it differs, and it never
    touches the model (BatchNorm included)."""
    torch.manual_seed(0)
    model = bn_mlp().double().train()
    assert last_layer_parameters(model) == {"3.weight", "3.bias"}
    x, y = torch.randn(8, 6, dtype=torch.float64), torch.randint(0, 3, (8,))
    mx, my = torch.randn(5, 6, dtype=torch.float64), torch.randint(0, 3, (5,))
    sw = weighting(MWNet(hidden=16).double(), 3)
    before = snapshot(model)
    head_only = torch.optim.SGD(model[3].parameters(), lr=0.2)
    exact = weighting_meta_gradient(model, sw, x, y, mx, my, lr=None, optimizer=head_only,
                                    estimator=build_estimator("exact"))
    last = weighting_meta_gradient(model, sw, x, y, mx, my, lr=None, optimizer=head_only,
                                   estimator=build_estimator("last-layer"))
    for a, b in zip(exact.grads, last.grads, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-15)
    everything = torch.optim.SGD(model.parameters(), lr=0.2)
    full = weighting_meta_gradient(model, sw, x, y, mx, my, lr=None, optimizer=everything)
    approx = weighting_meta_gradient(model, sw, x, y, mx, my, lr=None, optimizer=everything,
                                     estimator=build_estimator("last-layer"))
    assert not all(torch.allclose(a, b) for a, b in zip(full.grads, approx.grads, strict=True))
    assert_same_state(model, before)
