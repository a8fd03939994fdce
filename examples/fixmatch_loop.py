"""A weighter as FixMatch's mask in your own semi-supervised loop: scikit-learn digits with
4 labels per class, the other training images used without their labels.

    python examples/fixmatch_loop.py                        # the shipped cmwnet-fixmatch4-fmnist
    python examples/fixmatch_loop.py path/to/weighter_dir   # or a directory, or org/repo[@rev]

Trains the same model twice from the same seed: FixMatch with its confidence threshold
(tau = 0.95), and FixMatch whose mask is the frozen weighter (its families fitted on the
pseudo-label counts of the previous epoch, the estimate of the unlabelled class counts),
and prints the test accuracy of both. The weighter starts after the same threshold warm-up.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from weightzoo import WeightedLoss, fixmatch_unlabeled_loss, strong_view


def digits(seed: int, per_class: int) -> tuple[torch.Tensor, ...]:
    """Labelled images and labels, unlabelled images, test images and labels (N, 1, 8, 8)."""
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16, dtype=torch.float32).reshape(-1, 1, 8, 8)
    x_train, x_test, y_train, y_test = train_test_split(x, torch.tensor(y), test_size=0.3, stratify=y,
                                                        random_state=seed)
    g = torch.Generator().manual_seed(seed)
    labelled = torch.cat([torch.nonzero(y_train == c).squeeze(1)[torch.randperm(int((y_train == c).sum()),
                                                                                 generator=g)[:per_class]]
                          for c in range(10)])
    unlabelled = torch.ones(len(y_train), dtype=torch.bool)
    unlabelled[labelled] = False
    return x_train[labelled], y_train[labelled], x_train[unlabelled], x_test, y_test


def weak(x: torch.Tensor) -> torch.Tensor:
    """A random translation by up to one pixel (12.5% of 8)."""
    shifts = torch.randint(-1, 2, (2,))
    return torch.roll(x, shifts=(int(shifts[0]), int(shifts[1])), dims=(2, 3))


def train(data: tuple[torch.Tensor, ...], weighter: str | None, epochs: int, warmup_epochs: int,
          seed: int = 0) -> nn.Module:
    x_l, y_l, x_u = data[:3]
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9)
    counts = torch.bincount(y_l, minlength=10)  # epoch 0: the labelled counts (one family)
    for epoch in range(epochs):
        mask: float | WeightedLoss = 0.95
        if weighter is not None and epoch >= warmup_epochs:
            mask = WeightedLoss.from_pretrained(weighter, class_counts=counts)
        counts = torch.zeros(10, dtype=torch.long)
        for u in torch.randperm(len(x_u)).split(7 * 16):
            b = torch.randint(0, len(x_l), (16,))
            weak_u = weak(x_u[u])
            logits = model(torch.cat([weak(x_l[b]), weak_u, strong_view(weak_u)]))
            labelled, weak_logits, strong_logits = logits.split([len(b), len(u), len(u)])
            loss = F.cross_entropy(labelled, y_l[b])
            loss = loss + fixmatch_unlabeled_loss(weak_logits, strong_logits, mask)
            counts += torch.bincount(weak_logits.argmax(1), minlength=10)  # pseudo-label counts
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return (model(x).argmax(1) == y).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("weighter", nargs="?", default="cmwnet-fixmatch4-fmnist",
                        help="zoo name, weighter directory or Hub repo id (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--warmup-epochs", type=int, default=1, help="threshold-mask epochs first")
    parser.add_argument("--labels-per-class", type=int, default=4)
    args = parser.parse_args()

    data = digits(seed=0, per_class=args.labels_per_class)
    for name, weighter in (("FixMatch", None), (f"FixMatch + {args.weighter}", args.weighter)):
        model = train(data, weighter, args.epochs, args.warmup_epochs)
        print(f"test accuracy, {name}: {accuracy(model, data[3], data[4]):.2%}")


if __name__ == "__main__":
    main()
