"""Task families: 1-D k-means over class counts with sorted centres."""

import numpy as np
import pytest
import torch

from weightzoo.weighting.families import TaskFamilies, class_counts

COUNTS = [5, 6, 50, 52, 500, 510]


def _families(fam: TaskFamilies) -> list[int]:
    return fam.family_of_class.tolist()


def test_hand_made_counts() -> None:
    fam = TaskFamilies.fit(COUNTS, num_families=3)
    assert _families(fam) == [0, 0, 1, 1, 2, 2]
    assert fam.centers == pytest.approx((5.5, 51.0, 505.0))
    assert fam.num_families == 3 and fam.num_classes == 6
    assert fam.class_counts == tuple(COUNTS)
    assert fam.family_of_class.dtype == torch.long


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_order_independent(seed: int) -> None:
    perm = np.random.default_rng(seed).permutation(len(COUNTS))
    shuffled = TaskFamilies.fit(np.asarray(COUNTS)[perm], num_families=3)
    expected = [0, 0, 1, 1, 2, 2]
    assert _families(shuffled) == [expected[c] for c in perm]
    assert shuffled.centers == pytest.approx((5.5, 51.0, 505.0))


def test_deterministic_with_seed() -> None:
    counts = np.random.default_rng(0).integers(1, 1000, size=100)
    a = TaskFamilies.fit(counts, num_families=3, seed=7)
    b = TaskFamilies.fit(counts, num_families=3, seed=7)
    assert torch.equal(a.family_of_class, b.family_of_class) and a.centers == b.centers
    assert list(a.centers) == sorted(a.centers)
    # families respect the count order: a larger class is never in a smaller family
    order = np.argsort(counts, kind="stable")
    assert np.all(np.diff(a.family_of_class.numpy()[order]) >= 0)


def test_accepts_tensor_counts() -> None:
    fam = TaskFamilies.fit(torch.tensor(COUNTS), num_families=3)
    assert _families(fam) == [0, 0, 1, 1, 2, 2]


def test_transfer_refits_on_new_counts() -> None:
    source = TaskFamilies.fit(COUNTS, num_families=3)
    target = TaskFamilies.fit([4000, 10, 900, 12, 950, 3900, 11], num_families=3)
    assert _families(target) == [2, 0, 1, 0, 1, 2, 0]
    assert target.centers == pytest.approx((11.0, 925.0, 3950.0))
    assert target.num_classes == 7 and source.num_classes == 6


def test_fewer_distinct_counts_than_families() -> None:
    fam = TaskFamilies.fit([10, 500, 10, 500], num_families=3)
    assert _families(fam) == [0, 2, 0, 2]  # d=2: smallest -> head 0, largest -> head K-1
    assert fam.centers == (10.0, None, 500.0)
    fam5 = TaskFamilies.fit([1, 2, 3], num_families=5)
    assert _families(fam5) == [0, 2, 4]
    assert fam5.centers == (1.0, None, 2.0, None, 3.0)


def test_all_equal_counts_use_middle_family() -> None:
    fam = TaskFamilies.fit([100] * 10, num_families=3)
    assert _families(fam) == [1] * 10
    assert fam.centers == (None, 100.0, None)
    assert _families(TaskFamilies.fit([7] * 4, num_families=4)) == [2] * 4


def test_one_class() -> None:
    fam = TaskFamilies.fit([42], num_families=3)
    assert _families(fam) == [1] and fam.centers == (None, 42.0, None)
    single = TaskFamilies.fit([42], num_families=1)
    assert _families(single) == [0] and single.centers == (42.0,)


def test_single_family() -> None:
    fam = TaskFamilies.fit(COUNTS, num_families=1)
    assert _families(fam) == [0] * 6
    assert fam.centers == pytest.approx((sum(COUNTS) / 6,))


def test_zero_count_classes_are_family_zero_and_excluded() -> None:
    fam = TaskFamilies.fit([0, 5, 6, 0, 50, 52, 500, 510], num_families=3)
    assert _families(fam) == [0, 0, 0, 0, 1, 1, 2, 2]
    assert fam.centers == pytest.approx((5.5, 51.0, 505.0))  # zeros took no part in the fit
    assert _families(TaskFamilies.fit([0, 100, 100], num_families=3)) == [0, 1, 1]


def test_all_zero_counts() -> None:
    fam = TaskFamilies.fit([0, 0, 0], num_families=3)
    assert _families(fam) == [0, 0, 0]
    assert fam.centers == (None, None, None)


@pytest.mark.parametrize(
    ("counts", "num_families", "match"),
    [([], 3, "empty"), ([3, -1], 3, "non-negative"), ([3, 4], 0, "num_families")],
)
def test_fit_rejects_bad_input(counts: list[int], num_families: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TaskFamilies.fit(counts, num_families=num_families)


def test_class_counts() -> None:
    np.testing.assert_array_equal(class_counts([0, 2, 2, 1, 2], 4), [1, 1, 3, 0])
    np.testing.assert_array_equal(class_counts(torch.tensor([[1, 1], [0, 1]]), 2), [1, 3])
    np.testing.assert_array_equal(class_counts(np.array([0.0, 1.0, 1.0]), 3), [1, 2, 0])
    np.testing.assert_array_equal(class_counts([], 3), [0, 0, 0])


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        ([0, 1, 3], "label 3 is out of range for 3 classes"),
        ([0, -1], "labels must be integers >= 0, got -1 at position 1"),
        (torch.tensor([5]), "out of range"),
        ([0.0, 1.5], "integers"),
        ([0.0, float("nan")], "integers"),
        (["a", "b"], "integers"),
        ([1, None], "integers"),
    ],
)
def test_bad_labels_raise_value_error(labels: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        class_counts(labels, 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=match):
        TaskFamilies.from_labels(labels, num_classes=3)  # type: ignore[arg-type]


def test_from_labels() -> None:
    labels = np.repeat(np.arange(6), COUNTS)
    np.random.default_rng(0).shuffle(labels)
    fam = TaskFamilies.from_labels(torch.from_numpy(labels), num_classes=7)
    assert fam.class_counts == (*COUNTS, 0)
    assert _families(fam) == [0, 0, 1, 1, 2, 2, 0]


def test_call_maps_classes() -> None:
    fam = TaskFamilies.fit(COUNTS, num_families=3)
    classes = torch.tensor([5, 0, 3, 3, 2], dtype=torch.int32)
    out = fam(classes)
    assert out.dtype == torch.long
    assert out.tolist() == [2, 0, 1, 1, 1]


def test_to_device_and_to_dict() -> None:
    fam = TaskFamilies.fit(COUNTS, num_families=3)
    moved = fam.to("meta")
    assert moved.family_of_class.device.type == "meta"
    assert fam.family_of_class.device.type == "cpu"  # a copy, not in place
    assert moved.centers == fam.centers and moved.class_counts == fam.class_counts
    assert fam(torch.tensor([4], device="meta")).device.type == "meta"
    assert fam.to_dict() == {
        "centers": list(fam.centers),
        "family_of_class": [0, 0, 1, 1, 2, 2],
        "class_counts": COUNTS,
        "reason": "k-means on the class counts",
    }


def test_nearly_balanced_noisy_counts_give_one_family() -> None:
    """Class sizes that differ by sampling or symmetric noise only (here 107..144, the counts
    on which a CMW-Net once lost 11.67 points by splitting classes over its heads at random)
    all go to the middle head; the reason says so."""
    counts = [107, 144, 121, 131, 112, 139, 126, 118, 135, 110]
    fam = TaskFamilies.fit(counts, num_families=3)
    assert _families(fam) == [1] * 10
    assert fam.centers[0] is None and fam.centers[2] is None
    assert fam.centers[1] == pytest.approx(np.mean(counts))
    assert "equal sizes" in fam.reason and "1.35" in fam.reason


@pytest.mark.parametrize("counts", [
    [500, 500, 300, 300, 100, 100],               # long tail
    [3600, 6000, 8400, 6000, 6000, 3600, 6000, 8400, 6000, 6000],  # 40% asymmetric noise shifts
])
def test_clearly_imbalanced_counts_still_give_k_families(counts: list[int]) -> None:
    fam = TaskFamilies.fit(counts, num_families=3)
    assert sorted(set(_families(fam))) == [0, 1, 2]
    assert fam.reason == "k-means on the class counts"
