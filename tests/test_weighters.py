"""MW-Net / CMW-Net weighting networks and their config."""

import math

import numpy as np
import pytest
import torch

from weightzoo.weighting.nets import (
    CMWNet,
    MWNet,
    WeighterConfig,
    build_weighter,
    loss_input_scale,
)


def _losses(n: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, generator=torch.Generator().manual_seed(seed)) * 5.0


def _families(n: int, k: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(seed))


def _num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_mwnet_architecture_and_param_count() -> None:
    w = MWNet()
    assert w.config.kind == "mwnet" and w.num_families == 1
    assert _num_params(w) == 301  # Linear(1,100) + Linear(100,1)
    assert w(_losses()).shape == (16,)


def test_cmwnet_architecture_and_param_count() -> None:
    w = CMWNet()
    assert w.config.kind == "cmwnet" and w.num_families == 3
    assert _num_params(w) == 503  # Linear(1,100) + 3 heads Linear(100,1)
    losses = _losses()
    assert w(losses, _families(16, 3)).shape == (16,)
    assert w.curve(w.loss_grid(7)).shape == (7, 3)


def test_build_weighter_matches_kind() -> None:
    assert type(build_weighter(WeighterConfig(kind="mwnet", num_families=1))) is MWNet
    w = build_weighter(WeighterConfig(num_families=5))
    assert type(w) is CMWNet and w.num_families == 5


@pytest.mark.parametrize("kind", ["mwnet", "cmwnet"])
def test_outputs_in_unit_interval(kind: str) -> None:
    torch.manual_seed(0)
    w = build_weighter(WeighterConfig(kind=kind, num_families=1 if kind == "mwnet" else 3))
    with torch.no_grad():  # push the net towards saturation on both sides
        w.shared[0].weight.mul_(50)
    losses = torch.cat([_losses(64) * 100, -_losses(8)])
    out = w(losses, _families(72, w.num_families))
    assert out.dtype == torch.float32
    assert bool(((out >= 0) & (out <= 1)).all())


def test_cmwnet_head_selection_matches_per_sample_loop() -> None:
    torch.manual_seed(0)
    w = CMWNet(num_families=4)
    losses, fams = _losses(32), _families(32, 4)
    got = w(losses, fams, num_classes=10)
    table = w.curve(losses, num_classes=10)  # (B, K): every head at every loss
    expected = torch.stack([table[i, int(fams[i])] for i in range(len(losses))])
    torch.testing.assert_close(got, expected)
    # and head k of the net is column k, i.e. one head per family
    x = (losses / math.log(10)).unsqueeze(1)
    manual = torch.sigmoid(w.heads(w.shared(x)))
    torch.testing.assert_close(table, manual)


def test_cmwnet_family_checks() -> None:
    w = CMWNet()
    with pytest.raises(ValueError, match="family"):
        w(_losses(4))
    with pytest.raises(ValueError, match="shape"):
        w(_losses(4), _families(3, 3))
    with pytest.raises(ValueError, match="1-D"):
        w(_losses(4).reshape(2, 2), _families(4, 3).reshape(2, 2))


def test_mwnet_ignores_families() -> None:
    torch.manual_seed(0)
    w = MWNet()
    losses = _losses()
    base = w(losses)
    torch.testing.assert_close(w(losses, torch.zeros(16, dtype=torch.long)), base)
    torch.testing.assert_close(w(losses, _families(16, 7)), base)


def test_loss_input_scale() -> None:
    assert loss_input_scale("none", 1000) == 1.0
    assert loss_input_scale("log_classes", 10) == pytest.approx(1 / math.log(10))
    assert loss_input_scale("log_classes", 1) == 1.0


def test_batch_mean_reads_each_loss_relative_to_its_batch() -> None:
    """``batch_mean``: the weights do not change when every loss of the batch is scaled;
    a loss at the batch's mean gets the curve's value at 1; non-finite losses stay out of
    the mean (and get weight 0 from ``SampleWeighting``)."""
    torch.manual_seed(0)
    w = CMWNet(input_norm="batch_mean", source_num_classes=10)
    losses, fams = _losses(), _families(16, 3)
    torch.testing.assert_close(w(losses * 7.5, fams, num_classes=1000), w(losses, fams))
    at_mean, families = torch.full((4,), 2.0), torch.arange(4) % 3
    torch.testing.assert_close(w(at_mean, families), w.curve(torch.ones(1))[0][families])
    with_bad = torch.cat([losses, torch.tensor([float("nan"), float("inf")])])
    torch.testing.assert_close(w(with_bad, torch.cat([fams, torch.zeros(2, dtype=torch.long)]))[:16],
                               w(losses, fams))
    zeros = torch.zeros(5)  # a mean of 0 leaves the batch unscaled
    torch.testing.assert_close(w(zeros, torch.zeros(5, dtype=torch.long)),
                               w.curve(torch.zeros(1))[0, 0].expand(5))
    huge = torch.tensor([2e38, 2e38, 1e38])  # finite in fp32; their sum is not
    torch.testing.assert_close(w(huge, torch.zeros(3, dtype=torch.long)),
                               w(torch.tensor([2.0, 2.0, 1.0]), torch.zeros(3, dtype=torch.long)))
    assert w.loss_grid(5).tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert loss_input_scale("batch_mean", 10) == 1.0


def test_log_classes_divides_by_ln_of_given_num_classes() -> None:
    torch.manual_seed(0)
    w = CMWNet(input_norm="log_classes", source_num_classes=10)
    losses, fams = _losses(), _families(16, 3)
    c1, c2 = 10, 1000
    at_c1 = w(losses, fams, num_classes=c1)
    rescaled = losses * math.log(c2) / math.log(c1)
    torch.testing.assert_close(w(rescaled, fams, num_classes=c2), at_c1)
    # the default is the source data's class count
    torch.testing.assert_close(w(losses, fams), at_c1)
    # and the grid of the curve spans 0 .. 3 ln C of the given data
    assert float(w.loss_grid(5, num_classes=c2)[-1]) == pytest.approx(3 * math.log(c2))


def test_input_norm_none_ignores_num_classes() -> None:
    torch.manual_seed(0)
    w = MWNet(input_norm="none")
    losses = _losses()
    torch.testing.assert_close(w(losses, num_classes=10), w(losses, num_classes=1000))


@pytest.mark.parametrize("kind", ["mwnet", "cmwnet"])
def test_non_finite_and_huge_losses_give_finite_weights(kind: str) -> None:
    torch.manual_seed(0)
    w = build_weighter(WeighterConfig(kind=kind, num_families=1 if kind == "mwnet" else 3))
    with torch.no_grad():  # a trained net can have |w| > 1, so huge inputs overflow
        w.shared[0].weight.mul_(3)
    big = torch.finfo(torch.float32).max
    losses = torch.tensor([float("nan"), float("inf"), -float("inf"), big, -big, 1e36, 0.5])
    out = w(losses, _families(7, w.num_families))
    assert bool(torch.isfinite(out).all())
    assert bool(((out >= 0) & (out <= 1)).all())


def test_half_precision_losses_are_accepted() -> None:
    w = CMWNet()
    losses, fams = _losses(), _families(16, 3)
    out = w(losses.to(torch.bfloat16), fams)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, w(losses.to(torch.bfloat16).float(), fams))


def test_losses_are_detached() -> None:
    w = CMWNet()
    losses = _losses().requires_grad_(True)
    w(losses, _families(16, 3)).sum().backward()
    assert losses.grad is None
    assert all(p.grad is not None for p in w.parameters())  # the weighter itself trains


def test_config_defaults_and_round_trip() -> None:
    cfg = WeighterConfig(metadata={"source": {"dataset": "digits"}})
    assert cfg.kind == "cmwnet" and cfg.num_families == 3 and cfg.hidden == 100
    assert WeighterConfig.from_dict(cfg.to_dict()) == cfg
    assert CMWNet(cfg, hidden=8).config.hidden == 8


def test_config_accepts_numpy_integers() -> None:
    cfg = WeighterConfig(num_families=np.int64(2), source_num_classes=np.int32(7))
    assert type(cfg.num_families) is int and type(cfg.source_num_classes) is int


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "l2rw"}, "kind"),
        ({"kind": "mwnet", "num_families": 3}, "one family"),
        ({"num_families": 0}, "positive"),
        ({"hidden": 0}, "positive"),
        ({"normalization": "median"}, "normalization"),
        ({"input_norm": "sqrt"}, "input_norm"),
        ({"source_num_classes": 0}, "source_num_classes"),
        ({"hidden": 100.0}, "hidden must be an integer"),
        ({"num_families": True}, "num_families must be an integer"),
        ({"source_num_classes": "10"}, "source_num_classes must be an integer"),
        ({"metadata": ["a"]}, "metadata"),
    ],
)
def test_config_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        WeighterConfig(**kwargs)


def test_from_dict_rejects_unknown_keys() -> None:
    data = WeighterConfig().to_dict() | {"temperature": 2.0, "dropout": 0.1}
    with pytest.raises(ValueError, match="unknown weighter config keys: dropout, temperature"):
        WeighterConfig.from_dict(data)
