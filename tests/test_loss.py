"""WeightedLoss: a frozen weighter as a loss wrapper, checked against hand computations."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from weightzoo.artifact.format import save_artifact
from weightzoo.weighting.families import TaskFamilies
from weightzoo.weighting.nets import CMWNet, MWNet
from weightzoo.weighting.reduction import reduce_weighted
from weightzoo.weighting.weighted_loss import WeightedLoss

COUNTS = [5, 6, 50, 52, 500, 510]
FAMILY_OF_CLASS = torch.tensor([0, 0, 1, 1, 2, 2])  # what k-means gives on COUNTS
C = len(COUNTS)
TARGETS = torch.tensor([0, 1, 2, 3, 4, 5, 5, 2])


def _weighter(normalization: str = "sum", seed: int = 0) -> CMWNet:
    torch.manual_seed(seed)
    return CMWNet(normalization=normalization, source_num_classes=10)


def _logits(batch: int = len(TARGETS), classes: int = C, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, classes, generator=gen) * 2).requires_grad_(True)


def _criterion(normalization: str = "sum", nonfinite: str = "raise") -> WeightedLoss:
    families = TaskFamilies(centers=(5.5, 51.0, 505.0), family_of_class=FAMILY_OF_CLASS,
                            class_counts=tuple(COUNTS))
    return WeightedLoss(_weighter(normalization), families, nonfinite=nonfinite)


def _expected_weights(crit: WeightedLoss, losses: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """The weighter called directly: family of each class, input scaled by ln C of the data."""
    with torch.no_grad():
        return crit.weighter(losses.detach(), FAMILY_OF_CLASS[classes], num_classes=C)


def _hand_reduce(losses: torch.Tensor, v: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "mean":
        return (v * losses).mean()
    return (v * losses).sum() / v.sum()


@pytest.mark.parametrize("mode", ["sum", "mean", "detached_sum"])
def test_forward_equals_hand_computation(mode: str) -> None:
    crit = _criterion(mode)
    logits = _logits()
    loss = crit(logits, TARGETS)
    ce = F.cross_entropy(logits, TARGETS, reduction="none")
    v = _expected_weights(crit, ce, TARGETS)
    assert bool(((v > 0) & (v < 1)).all())
    expected = _hand_reduce(ce, v, mode)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(crit.last_weights, v)
    (grad,) = torch.autograd.grad(loss, logits)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(grad, expected_grad)


@pytest.mark.parametrize("mode", ["sum", "mean", "detached_sum"])
def test_reduce_weighted_modes(mode: str) -> None:
    losses = torch.tensor([1.0, 2.0, 4.0])
    v = torch.tensor([0.5, 0.25, 0.25], requires_grad=True)
    expected = {"sum": 2.0, "detached_sum": 2.0, "mean": 2.0 / 3}[mode]
    out = reduce_weighted(losses, v, mode)
    assert float(out.detach()) == pytest.approx(expected)
    out.backward()
    # d/dv_i of Σvℓ/Σv = (ℓ_i - out)/Σv; with a detached denominator it is ℓ_i / Σv
    expected_grad = {
        "sum": [-1.0, 0.0, 2.0], "detached_sum": [1.0, 2.0, 4.0], "mean": [1 / 3, 2 / 3, 4 / 3],
    }[mode]
    torch.testing.assert_close(v.grad, torch.tensor(expected_grad))


def test_reduce_weighted_errors() -> None:
    with pytest.raises(ValueError, match="differ"):
        reduce_weighted(torch.ones(3), torch.ones(2), "sum")
    with pytest.raises(ValueError, match="unknown normalization"):
        reduce_weighted(torch.ones(3), torch.ones(3), "median")


def test_mwnet_uses_logits_width_for_input_scale() -> None:
    torch.manual_seed(0)
    weighter = MWNet(source_num_classes=100)
    crit = WeightedLoss(weighter)
    logits, targets = _logits(classes=5), torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    loss = crit(logits, targets)
    ce = F.cross_entropy(logits, targets, reduction="none").detach()
    v = weighter(ce, num_classes=5)
    torch.testing.assert_close(loss, (v * ce).sum() / v.sum())


@pytest.mark.parametrize("mode", ["sum", "mean", "detached_sum"])
def test_zero_weight_sum_gives_finite_loss(mode: str) -> None:
    crit = _criterion(mode)
    with torch.no_grad():
        crit.weighter.heads.bias.fill_(-1e4)  # sigmoid(-1e4) == 0: every weight is exactly 0
    logits = _logits()
    loss = crit(logits, TARGETS)
    assert crit.last_weights is not None and bool((crit.last_weights == 0).all())
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert bool(torch.isfinite(logits.grad).all())


def test_gradient_reaches_logits_not_weighter() -> None:
    weighter = _weighter()
    crit = WeightedLoss.for_data(weighter, class_counts=COUNTS)
    assert crit.weighter is weighter and not weighter.training
    assert all(not p.requires_grad for p in weighter.parameters())
    model = torch.nn.Linear(4, C)
    x = torch.randn(len(TARGETS), 4, generator=torch.Generator().manual_seed(0))
    crit(model(x), TARGETS).backward()
    assert model.weight.grad is not None and float(model.weight.grad.abs().sum()) > 0
    assert all(p.grad is None for p in weighter.parameters())
    assert crit.last_weights is not None and not crit.last_weights.requires_grad


def test_soft_targets() -> None:
    crit = _criterion()
    logits = _logits()
    gen = torch.Generator().manual_seed(2)
    soft = torch.softmax(torch.randn(len(TARGETS), C, generator=gen) * 3, dim=1)
    loss = crit(logits, soft)
    per_sample = -(soft * torch.log_softmax(logits, dim=1)).sum(1)
    classes = soft.argmax(1)
    v = _expected_weights(crit, per_sample, classes)
    torch.testing.assert_close(loss, (v * per_sample).sum() / v.sum())
    loss.backward()
    assert logits.grad is not None
    with pytest.raises(ValueError, match="soft targets"):
        crit(logits, soft[:, :4])


def test_weigh_arbitrary_per_sample_loss() -> None:
    crit = _criterion()
    pred = torch.randn(len(TARGETS), 3, generator=torch.Generator().manual_seed(3), requires_grad=True)
    per_sample = (pred**2).mean(1)  # e.g. a regression loss
    loss = crit.reduce_losses(per_sample, TARGETS)
    v = _expected_weights(crit, per_sample, TARGETS)
    torch.testing.assert_close(loss, (v * per_sample).sum() / v.sum())
    torch.testing.assert_close(crit.weights(per_sample, TARGETS), v)
    torch.testing.assert_close(crit.last_weights, v)
    loss.backward()
    assert pred.grad is not None
    with pytest.raises(ValueError, match="differ"):
        crit.reduce_losses(per_sample[:3], TARGETS)


def test_last_weights_follow_each_call() -> None:
    crit = _criterion()
    assert crit.last_weights is None
    crit(_logits(seed=1), TARGETS)
    first = crit.last_weights
    crit(_logits(seed=2), TARGETS)
    assert first is not None and crit.last_weights is not None
    assert crit.last_weights.shape == (len(TARGETS),)
    assert not torch.equal(first, crit.last_weights)


def test_nan_sample_is_excluded_with_skip() -> None:
    crit = _criterion(nonfinite="skip")
    logits = _logits()
    with torch.no_grad():
        logits[2] = float("nan")
    loss = crit(logits, TARGETS)
    assert bool(torch.isfinite(loss))
    assert crit.last_weights is not None and float(crit.last_weights[2]) == 0.0
    keep = torch.arange(len(TARGETS)) != 2
    ce = F.cross_entropy(logits[keep], TARGETS[keep], reduction="none")
    v = _expected_weights(crit, ce, TARGETS[keep])
    torch.testing.assert_close(loss, (v * ce).sum() / v.sum())
    loss.backward()
    assert bool(torch.isfinite(logits.grad).all())  # masked before the loss: no NaN at all
    assert torch.equal(logits.grad[2], torch.zeros_like(logits.grad[2]))


def test_skipped_nan_logits_never_reach_the_model_parameters() -> None:
    """A model whose output row turns NaN after the last layer (an overflow downstream, a bad
    target transform): with skip, one backward and one SGD step leave every parameter finite."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, C)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(len(TARGETS), 4)
    poison = torch.zeros(len(TARGETS), 1)
    poison[3] = float("nan")
    logits = model(x) + poison
    crit = _criterion(nonfinite="skip")
    crit(logits, TARGETS).backward()
    opt.step()
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


def test_nan_input_row_raises_before_any_gradient() -> None:
    """The sweep's case: one NaN input row. No loss can stop 0 * NaN inside the model's own
    backward, so the default refuses the batch instead of poisoning the model silently."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, C)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(len(TARGETS), 4)
    x[5] = float("nan")
    with pytest.raises(FloatingPointError, match=r"1 of 8 samples have non-finite logits \(rows \[5\]\)"):
        _criterion()(model(x), TARGETS)
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="nonfinite must be one of"):
        _criterion(nonfinite="ignore")


def test_non_finite_per_sample_losses_in_weigh() -> None:
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        _criterion("mean").reduce_losses(torch.tensor([float("nan"), 1.0]), torch.tensor([0, 2]))
    crit = _criterion("mean", nonfinite="skip")
    losses = torch.tensor([float("nan"), 1.0, float("inf"), 2.0], requires_grad=True)
    classes = torch.tensor([0, 2, 4, 5])
    loss = crit.reduce_losses(losses, classes)
    v = _expected_weights(crit, losses, classes)
    assert crit.last_weights is not None
    assert crit.last_weights[[0, 2]].tolist() == [0.0, 0.0]
    torch.testing.assert_close(loss, (v[1] * 1.0 + v[3] * 2.0) / 4)  # mean over the batch, weight 0
    loss.backward()
    assert bool(torch.isfinite(losses.grad).all())


def test_all_nan_gives_nan() -> None:
    crit = _criterion(nonfinite="skip")
    loss = crit.reduce_losses(torch.full((4,), float("nan")), torch.tensor([0, 1, 2, 3]))
    assert bool(torch.isnan(loss))


@pytest.mark.parametrize("bad", [6, -1])
def test_targets_out_of_range(bad: int) -> None:
    crit = _criterion()
    targets = TARGETS.clone()
    targets[3] = bad
    with pytest.raises(ValueError, match=f"target class {bad} is out of range for 6 classes"):
        crit(_logits(), targets)
    with pytest.raises(ValueError, match="out of range"):
        crit.reduce_losses(torch.ones(len(TARGETS)), targets)


def test_logits_width_must_match_classes() -> None:
    crit = _criterion()
    with pytest.raises(ValueError, match="logits have 7 classes"):
        crit(_logits(classes=7), TARGETS)
    with pytest.raises(ValueError, match="batch, classes"):
        crit(_logits().reshape(2, 4, C), TARGETS)
    mw = WeightedLoss(MWNet(), num_classes=10)
    with pytest.raises(ValueError, match="logits have 6 classes"):
        mw(_logits(), TARGETS)


def test_cmwnet_needs_families() -> None:
    with pytest.raises(ValueError, match="class_counts= or labels="):
        WeightedLoss.for_data(_weighter())
    with pytest.raises(ValueError, match="task families"):
        WeightedLoss(_weighter())
    with pytest.raises(ValueError, match="K=1"):
        WeightedLoss(_weighter(), TaskFamilies.fit(COUNTS, 1))
    with pytest.raises(ValueError, match="not both"):
        WeightedLoss.for_data(_weighter(), class_counts=COUNTS, labels=TARGETS)
    with pytest.raises(ValueError, match="num_classes is 7"):
        WeightedLoss.for_data(_weighter(), class_counts=COUNTS, num_classes=7)


def test_autocast_bfloat16() -> None:
    crit = _criterion()
    torch.manual_seed(0)
    model = torch.nn.Linear(4, C)
    x = torch.randn(len(TARGETS), 4, generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
        loss = crit(logits, TARGETS)
    assert logits.dtype == torch.bfloat16
    assert loss.dtype == torch.float32 and bool(torch.isfinite(loss))
    torch.testing.assert_close(loss, crit(model(x), TARGETS), atol=0.05, rtol=0.05)
    loss.backward()
    assert model.weight.grad is not None and bool(torch.isfinite(model.weight.grad).all())


def test_to_moves_family_table_and_weighter() -> None:
    crit = _criterion().to("meta")
    assert crit.family_of_class.device.type == "meta"
    assert crit.weighter.heads.weight.device.type == "meta"
    assert "family_of_class" not in crit.state_dict()  # fitted per dataset, not saved


def test_class_without_samples() -> None:
    counts = [0, *COUNTS]
    crit = WeightedLoss.for_data(_weighter(), class_counts=counts)
    assert crit.family_of_class.tolist() == [0, 0, 0, 1, 1, 2, 2]
    logits, targets = _logits(batch=4, classes=7), torch.tensor([0, 0, 3, 6])
    loss = crit(logits, targets)
    assert bool(torch.isfinite(loss))
    ce = F.cross_entropy(logits, targets, reduction="none").detach()
    with torch.no_grad():
        v = crit.weighter(ce, torch.tensor([0, 0, 1, 2]), num_classes=7)
    torch.testing.assert_close(crit.last_weights, v)


def test_from_pretrained_with_labels_and_counts(tmp_path: Path) -> None:
    weighter = _weighter()
    directory = save_artifact(weighter, tmp_path / "w", curve=False)
    labels = np.repeat(np.arange(C), COUNTS)
    by_labels = WeightedLoss.from_pretrained(str(directory), labels=labels)
    by_counts = WeightedLoss.from_pretrained(directory, class_counts=torch.tensor(COUNTS))
    for crit in (by_labels, by_counts):
        assert crit.num_classes == C
        assert crit.family_of_class.tolist() == [0, 0, 1, 1, 2, 2]
        for name, tensor in weighter.state_dict().items():
            assert torch.equal(crit.weighter.state_dict()[name], tensor)
    logits = _logits()
    torch.testing.assert_close(by_labels(logits, TARGETS), _criterion()(logits, TARGETS))
    torch.testing.assert_close(by_counts(logits, TARGETS), _criterion()(logits, TARGETS))


# --- the drop-in warm-up -----------------------------------------------------------------


def test_warmup_returns_plain_ce_for_the_first_training_samples() -> None:
    """Until ``warmup_samples`` training samples were seen: the plain mean CE (weights 1);
    evaluation calls (no grad) do not count; then the weighted loss. The count is in the
    state dict, so a resumed loop resumes the warm-up."""
    families = TaskFamilies(centers=(5.5, 51.0, 505.0), family_of_class=FAMILY_OF_CLASS,
                            class_counts=tuple(COUNTS))
    crit = WeightedLoss(_weighter(), families, warmup_samples=20)
    weighted = _criterion()
    for step in range(3):  # 8 samples each: 0, 8, 16 seen before the call -> warm-up
        logits = _logits(seed=step)
        with torch.no_grad():
            torch.testing.assert_close(crit(logits, TARGETS), F.cross_entropy(logits, TARGETS))  # no count
        assert crit.samples_seen == 8 * step
        loss = crit(logits, TARGETS)
        torch.testing.assert_close(loss, F.cross_entropy(logits, TARGETS))
        assert torch.equal(crit.last_weights, torch.ones(len(TARGETS)))
    assert not crit.warming_up and crit.samples_seen == 24
    logits = _logits(seed=9)
    torch.testing.assert_close(crit(logits, TARGETS), weighted(logits, TARGETS))
    assert not torch.allclose(crit(logits, TARGETS), F.cross_entropy(logits, TARGETS))
    resumed = WeightedLoss(_weighter(), families, warmup_samples=20)
    resumed.load_state_dict(crit.state_dict())
    assert resumed.samples_seen == 24 and not resumed.warming_up
    fresh = WeightedLoss(_weighter(), families, warmup_samples=20)
    soft = torch.softmax(torch.randn(len(TARGETS), C), dim=1)
    torch.testing.assert_close(fresh.soft_label_loss(logits, TARGETS, soft), F.cross_entropy(logits, TARGETS))
    with pytest.raises(ValueError, match="warmup_samples"):
        WeightedLoss(_weighter(), families, warmup_samples=-1)


def test_warmup_counts_every_rank_under_torch_distributed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each of 4 ranks sees its shard: a local batch of 8 is 32 samples of the epoch."""
    monkeypatch.setattr("weightzoo.distributed.rank_and_world", lambda: (1, 4))
    crit = WeightedLoss(MWNet(), None, C, warmup_samples=40)
    crit(_logits(), TARGETS)
    assert crit.samples_seen == 32 and crit.warming_up
    crit(_logits(), TARGETS)
    assert crit.samples_seen == 64 and not crit.warming_up


def test_warmup_defaults_to_the_weighters_meta_training_schedule() -> None:
    """``for_data`` sizes the warm-up on the target data: warmup_epochs x its label count,
    by default the warm-up the weighter's artifact says it was meta-trained after."""
    weighter = MWNet()
    weighter.config.metadata["method"] = {"schedule": {"warmup_epochs": 2, "epochs": 20}}
    labels = torch.arange(10).repeat(5)  # 50 training labels
    assert WeightedLoss.for_data(weighter, labels=labels).warmup_samples == 100
    assert WeightedLoss.for_data(weighter, labels=labels, warmup_epochs=0).warmup_samples == 0
    assert WeightedLoss.for_data(weighter, class_counts=[5] * 10, warmup_epochs=0.5).warmup_samples == 25
    with pytest.warns(UserWarning, match="cannot be sized"):
        assert WeightedLoss.for_data(weighter).warmup_samples == 0
    with pytest.raises(ValueError, match="needs the data's size"):
        WeightedLoss.for_data(weighter, warmup_epochs=1)
    with pytest.raises(ValueError, match="warmup_epochs must be >= 0"):
        WeightedLoss.for_data(weighter, labels=labels, warmup_epochs=-1)
    assert WeightedLoss.for_data(MWNet(), labels=labels).warmup_samples == 0  # records none
    shipped = WeightedLoss.from_pretrained("mwnet-fmnist-sym40", labels=labels, num_classes=10)
    assert shipped.warmup_samples == 50  # meta-trained after 1 plain-CE epoch
