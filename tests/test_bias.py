"""Bias injection: realised rates, maps, profiles, order, determinism, spec parsing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from weightzoo.data.bias import (
    DEFAULT_CLASS_MAPS,
    BiasSpec,
    BiasStage,
    inject_bias,
    longtail_counts,
    reference_posterior,
)
from weightzoo.data.sources import DataSplits, load_dataset


@pytest.fixture(scope="module")
def digits() -> DataSplits:
    return load_dataset("digits")


@pytest.fixture(scope="module")
def mnist5k() -> DataSplits:
    return load_dataset("mnist5k")


def test_none_keeps_everything(digits: DataSplits) -> None:
    b = inject_bias(digits.train_x, digits.train_y, 10, "none", seed=0)
    assert torch.equal(b.indices, torch.arange(len(digits.train_y)))
    assert torch.equal(b.labels, digits.train_y) and not b.is_noisy.any()
    assert b.report["noise_rate"] == 0.0 and b.report["spec"] == "none"


def test_symmetric_rate_and_flips_differ(digits: DataSplits) -> None:
    b = inject_bias(digits.train_x, digits.train_y, 10, "symmetric:0.4", seed=0)
    assert abs(b.is_noisy.float().mean().item() - 0.4) < 0.05
    assert torch.equal(b.is_noisy, b.labels != b.clean_labels)
    assert torch.equal(b.clean_labels, digits.train_y)
    # flips go to every other class, roughly uniformly
    targets = torch.bincount(b.labels[b.is_noisy], minlength=10)
    assert targets.min() > 0.5 * targets.float().mean()
    report = json.loads(json.dumps(b.report))
    assert report["noise_rate"] == pytest.approx(b.is_noisy.float().mean().item())
    assert all(abs(r - 0.4) < 0.15 for r in report["noise_rate_per_class"])
    assert report["noisy_class_counts"] == torch.bincount(b.labels, minlength=10).tolist()


def test_asymmetric_follows_the_mnist_map(mnist5k: DataSplits) -> None:
    b = inject_bias(mnist5k.train_x, mnist5k.train_y, 10, "asymmetric:0.4", seed=0,
                    dataset="mnist5k")
    mapping = DEFAULT_CLASS_MAPS["mnist5k"][1]
    assert mapping == {2: 7, 3: 8, 5: 6, 6: 5, 7: 1}
    noisy_clean, noisy_label = b.clean_labels[b.is_noisy], b.labels[b.is_noisy]
    assert all(mapping[int(c)] == int(n) for c, n in zip(noisy_clean, noisy_label, strict=True))
    rates = b.report["noise_rate_per_class"]
    for c in range(10):
        if c in mapping:
            assert abs(rates[c] - 0.4) < 0.08
        else:
            assert rates[c] == 0.0
    assert abs(b.report["noise_rate"] - 0.4 * 5 / 10) < 0.03  # honest: 5 of 10 classes mapped


def test_asymmetric_explicit_map_no_silent_default_and_cifar100() -> None:
    y = torch.arange(300) % 3
    x = torch.zeros(300, 2)
    b = inject_bias(x, y, 3, "asymmetric:1", seed=0, class_map={0: 2})
    assert torch.equal(b.labels, torch.where(y == 0, 2, y))
    assert b.report["class_map"] == {"0": 2}
    with pytest.raises(ValueError, match="needs a class map for dataset 'npz:mine.npz'.*pairflip"):
        inject_bias(x, y, 3, "asymmetric:1", seed=0, dataset="npz:mine.npz")
    with pytest.raises(ValueError, match="needs 10 classes"):
        inject_bias(x, y, 3, "asymmetric:0.2", seed=0, dataset="cifar10")
    with pytest.raises(ValueError, match="outside"):
        inject_bias(x, y, 3, "asymmetric:0.2", seed=0, class_map={0: 3})
    cifar100 = DEFAULT_CLASS_MAPS["cifar100"][1]
    assert sorted(cifar100) == sorted(cifar100.values()) == list(range(100))
    assert cifar100[4] == 30 and cifar100[95] == 4  # aquatic mammals: 4,30,55,72,95


def test_pairflip(digits: DataSplits) -> None:
    b = inject_bias(digits.train_x, digits.train_y, 10, "pairflip:0.45", seed=3)
    assert abs(b.report["noise_rate"] - 0.45) < 0.05
    assert torch.equal(b.labels[b.is_noisy], (b.clean_labels[b.is_noisy] + 1) % 10)


def test_instance_noise_targets_low_margin_samples(digits: DataSplits) -> None:
    b = inject_bias(digits.train_x, digits.train_y, 10, "instance:0.3", seed=0)
    assert abs(b.report["noise_rate"] - 0.3) < 0.05
    posterior = reference_posterior(digits.train_x, digits.train_y.numpy(), 10, seed=0)
    others = posterior.clone()
    others[torch.arange(len(b.labels)), b.clean_labels] = -1.0
    # a flipped label is the most likely class other than the clean one
    assert torch.equal(b.labels[b.is_noisy], others.argmax(1)[b.is_noisy])
    top2 = posterior.topk(2, dim=1).values
    margin = top2[:, 0] - top2[:, 1]
    assert margin[b.is_noisy].mean() < margin[~b.is_noisy].mean() - 0.1


def test_longtail_profile(mnist5k: DataSplits) -> None:
    b = inject_bias(mnist5k.train_x, mnist5k.train_y, 10, "longtail:100", seed=0)
    counts = torch.bincount(b.clean_labels, minlength=10).numpy()
    expected = 400 * 100.0 ** (-np.arange(10) / 9)
    assert np.all(np.abs(counts - expected) <= 1)
    assert b.report["imbalance_factor"] == pytest.approx(100, rel=0.05)
    assert b.report["n_kept"] == len(b.indices) == counts.sum()
    assert torch.equal(b.clean_labels, mnist5k.train_y[b.indices]) and not b.is_noisy.any()
    assert len(torch.unique(b.indices)) == len(b.indices)
    assert longtail_counts(10, 500, 1).tolist() == [500] * 10
    assert longtail_counts(1, 7, 50).tolist() == [7]


def test_longtail_needs_every_class() -> None:
    with pytest.raises(ValueError, match="classes \\[2\\] have no samples"):
        inject_bias(torch.zeros(4, 1), torch.tensor([0, 1, 0, 1]), 3, "longtail:10", seed=0)


def test_combination_subsamples_first_then_adds_noise(mnist5k: DataSplits) -> None:
    lt = inject_bias(mnist5k.train_x, mnist5k.train_y, 10, "longtail:50", seed=5)
    both = inject_bias(mnist5k.train_x, mnist5k.train_y, 10, "symmetric:0.2+longtail:50", seed=5)
    assert both.report["spec"] == "longtail:50+symmetric:0.2"
    assert torch.equal(lt.indices, both.indices)  # noise does not change which samples stay
    assert torch.equal(torch.bincount(both.clean_labels), torch.bincount(lt.clean_labels))
    assert abs(both.report["noise_rate"] - 0.2) < 0.05
    assert [s["stage"] for s in both.report["stages"]] == ["symmetric:0.2"]


def test_overlaid_noise_stages(digits: DataSplits) -> None:
    b = inject_bias(digits.train_x, digits.train_y, 10, "instance:0.3+asymmetric:0.2", seed=0,
                    dataset="digits")
    first, second = b.report["stages"]
    assert first["stage"] == "instance:0.3" and second["stage"] == "asymmetric:0.2"
    assert first["changed"] > 0 and second["changed"] > 0
    assert b.report["noise_rate"] > 0.3


def test_deterministic_for_seed_and_independent_of_global_rng(digits: DataSplits) -> None:
    spec = "longtail:10+symmetric:0.3+instance:0.2"
    torch.manual_seed(1)
    np.random.seed(1)
    a = inject_bias(digits.train_x, digits.train_y, 10, spec, seed=7)
    torch.manual_seed(2)
    np.random.seed(2)
    b = inject_bias(digits.train_x, digits.train_y, 10, spec, seed=7)
    c = inject_bias(digits.train_x, digits.train_y, 10, spec, seed=8)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.labels, b.labels)
    assert a.report == b.report
    assert not torch.equal(a.indices, c.indices)


@pytest.mark.parametrize(
    "text",
    ["none", "symmetric:0.4", "asymmetric:0.4", "pairflip:0.45", "instance:0.3", "longtail:100",
     "longtail:50+symmetric:0.2", "instance:0.3+asymmetric:0.2", "symmetric:0.123456789"],
)
def test_parse_str_round_trip(text: str) -> None:
    spec = BiasSpec.parse(text)
    assert str(spec) == text and BiasSpec.parse(str(spec)) == spec


def test_parse_normalises_order_and_case() -> None:
    spec = BiasSpec.parse(" Symmetric:0.2 + LONGTAIL:50 ")
    assert spec.stages == (BiasStage("longtail", 50.0), BiasStage("symmetric", 0.2))
    assert spec.longtail == 50.0 and spec.noise_stages == (BiasStage("symmetric", 0.2),)


@pytest.mark.parametrize(
    ("text", "match"),
    [("gaussian:0.1", "unknown bias kind"), ("symmetric", "needs a value"),
     ("symmetric:abc", "not a number"), ("symmetric:1.5", "in \\[0, 1\\]"),
     ("longtail:0.5", ">= 1"), ("longtail:10+longtail:20", "at most one longtail"),
     ("none+symmetric:0.2", "cannot be combined"), ("pairflip:nan", "finite")],
)
def test_bad_specs(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BiasSpec.parse(text)


def test_bad_labels() -> None:
    with pytest.raises(ValueError, match="labels must be in"):
        inject_bias(torch.zeros(3, 1), torch.tensor([0, 1, 3]), 3, "symmetric:0.1", seed=0)
    with pytest.raises(ValueError, match="need x"):
        inject_bias(torch.zeros(2, 1), torch.tensor([0, 1, 2]), 3, "symmetric:0.1", seed=0)
