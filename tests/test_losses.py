import math

import pytest
import torch
import torch.nn.functional as F

from weightzoo.losses import (
    LOSS_NAMES,
    class_balanced_weights,
    per_sample_loss,
    soft_cross_entropy,
)

LOGITS = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [-1.0, 3.0, 0.0]], dtype=torch.float64)
TARGETS = torch.tensor([0, 2, 0])


def probs_of_targets() -> torch.Tensor:
    p = torch.softmax(LOGITS, dim=1)
    return p[torch.arange(3), TARGETS]


def test_ce_hard_and_soft() -> None:
    p_y = probs_of_targets()
    assert torch.allclose(per_sample_loss("ce", LOGITS, TARGETS), -p_y.log())
    one_hot = F.one_hot(TARGETS, 3).double()
    assert torch.allclose(per_sample_loss("ce", LOGITS, one_hot), -p_y.log())
    soft = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5], [0.0, 0.0, 1.0]], dtype=torch.float64)
    log_p = torch.log_softmax(LOGITS, dim=1)
    expected = -(soft * log_p).sum(1)
    assert torch.allclose(soft_cross_entropy(LOGITS, soft), expected)
    assert torch.allclose(per_sample_loss("ce", LOGITS, soft), expected)


def test_focal() -> None:
    p_y = probs_of_targets()
    expected = -((1 - p_y) ** 2) * p_y.log()
    assert torch.allclose(per_sample_loss("focal", LOGITS, TARGETS), expected)
    expected_g05 = -((1 - p_y) ** 0.5) * p_y.log()
    assert torch.allclose(per_sample_loss("focal", LOGITS, TARGETS, gamma=0.5), expected_g05)
    assert torch.allclose(
        per_sample_loss("focal", LOGITS, TARGETS, gamma=0.0), per_sample_loss("ce", LOGITS, TARGETS)
    )


def test_gce() -> None:
    p_y = probs_of_targets()
    expected = (1 - p_y**0.7) / 0.7
    assert torch.allclose(per_sample_loss("gce", LOGITS, TARGETS), expected)
    assert torch.allclose(per_sample_loss("gce", LOGITS, TARGETS, q=1.0), 1 - p_y)  # MAE
    near_ce = per_sample_loss("gce", LOGITS, TARGETS, q=1e-5)
    assert torch.allclose(near_ce, -p_y.log(), rtol=1e-4)
    with pytest.raises(ValueError, match="q must be in"):
        per_sample_loss("gce", LOGITS, TARGETS, q=0.0)


def test_sce_hard_and_soft() -> None:
    p_y = probs_of_targets()
    # One-hot label: RCE = -sum_k p_k log t_k = -(1 - p_y) * A with A = -4.
    expected = 0.1 * -p_y.log() + 1.0 * 4.0 * (1 - p_y)
    assert torch.allclose(per_sample_loss("sce", LOGITS, TARGETS), expected)
    expected_ab = 0.5 * -p_y.log() + 2.0 * 6.0 * (1 - p_y)
    got = per_sample_loss("sce", LOGITS, TARGETS, alpha=0.5, beta=2.0, log_zero=-6.0)
    assert torch.allclose(got, expected_ab)
    soft = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5], [0.0, 0.0, 1.0]], dtype=torch.float64)
    p = torch.softmax(LOGITS, dim=1)
    log_t = torch.where(soft > 0, soft.log(), torch.full_like(soft, -4.0))  # log 0 := A
    expected_soft = 0.1 * -(soft * p.log()).sum(1) - (p * log_t).sum(1)
    assert torch.allclose(per_sample_loss("sce", LOGITS, soft), expected_soft)


def test_class_balanced_weights_and_loss() -> None:
    counts = [100, 10, 1]
    beta = 0.9
    raw = [(1 - beta) / (1 - beta**n) for n in counts]
    expected = torch.tensor([w / sum(raw) * 3 for w in raw], dtype=torch.float64)
    weights = class_balanced_weights(counts, beta)
    assert torch.allclose(weights, expected)
    assert math.isclose(float(weights.sum()), 3.0)
    assert weights[2] > weights[1] > weights[0]
    got = per_sample_loss("class-balanced", LOGITS, TARGETS, class_counts=counts, beta=beta)
    assert torch.allclose(got, expected[TARGETS] * -probs_of_targets().log())
    # beta -> 0: every class weighs 1, i.e. plain CE.
    plain = per_sample_loss("class-balanced", LOGITS, TARGETS, class_counts=counts, beta=0.0)
    assert torch.allclose(plain, per_sample_loss("ce", LOGITS, TARGETS))
    assert torch.isfinite(class_balanced_weights([5, 0, 3])).all()


def test_errors() -> None:
    with pytest.raises(ValueError, match="ce, focal, gce, sce, class-balanced"):
        per_sample_loss("nope", LOGITS, TARGETS)
    with pytest.raises(ValueError, match="class_counts"):
        per_sample_loss("class-balanced", LOGITS, TARGETS)
    with pytest.raises(ValueError, match="does not use class_counts"):
        per_sample_loss("ce", LOGITS, TARGETS, class_counts=[1, 2, 3])
    with pytest.raises(ValueError, match="2 class counts for 3 classes"):
        per_sample_loss("class-balanced", LOGITS, TARGETS, class_counts=[1, 2])
    with pytest.raises(TypeError, match="focal"):
        per_sample_loss("focal", LOGITS, TARGETS, q=0.3)
    with pytest.raises(ValueError, match=r"in \[0, 3\)"):
        per_sample_loss("gce", LOGITS, torch.tensor([0, 3, 1]))
    with pytest.raises(ValueError, match="soft targets"):
        per_sample_loss("sce", LOGITS, torch.ones(3, 2))
    assert set(LOSS_NAMES) == {"ce", "focal", "gce", "sce", "class-balanced", "poly-soft", "bi-tempered"}


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_every_loss_is_per_sample_and_differentiable(name: str) -> None:
    logits = LOGITS.clone().requires_grad_(True)
    kwargs = {"class_counts": [5, 3, 1]} if name == "class-balanced" else {}
    out = per_sample_loss(name, logits, TARGETS, **kwargs)
    assert out.shape == (3,)
    assert (out >= 0).all()
    out.sum().backward()
    assert torch.isfinite(logits.grad).all()
