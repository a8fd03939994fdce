"""A pretrained weighter in a plain PyTorch loop: scikit-learn digits with 40% symmetric label noise.

    python examples/user_loop.py                        # the shipped weighter mwnet-fmnist-sym40
    python examples/user_loop.py path/to/weighter_dir   # or a directory, or org/repo[@rev] on the Hub

Trains the same model twice from the same seed, with plain cross-entropy and with the frozen
weighter as a drop-in criterion from the first step (it runs its own plain-CE warm-up, by
default as long as the weighter's meta-training did), and prints the accuracy of both on
the clean test set.
"""

from __future__ import annotations

import argparse

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from weightzoo import WeightedLoss, inject_bias


def noisy_digits(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train inputs and *noisy* labels, clean test inputs and labels."""
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        torch.tensor(x / 16, dtype=torch.float32), torch.tensor(y), test_size=0.3, stratify=y,
        random_state=seed,
    )
    noisy = inject_bias(x_train, y_train, 10, "symmetric:0.4", seed=seed)
    print(f"training labels: {noisy.is_noisy.float().mean():.0%} noisy")
    return x_train, noisy.labels, x_test, y_test


def train(x: torch.Tensor, train_labels: torch.Tensor, weighter: str | None, epochs: int,
          warmup_epochs: float | None, seed: int = 0) -> nn.Module:
    """Plain cross-entropy (``weighter=None``) or the frozen weighter as a drop-in criterion."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    crit = (WeightedLoss.from_pretrained(weighter, labels=train_labels, num_classes=10,
                                         warmup_epochs=warmup_epochs)
            if weighter else nn.CrossEntropyLoss())
    for _ in range(epochs):
        for batch in torch.randperm(len(x)).split(64):
            loss = crit(model(x[batch]), train_labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return (model(x).argmax(1) == y).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("weighter", nargs="?", default="mwnet-fmnist-sym40",
                        help="zoo name, weighter directory or Hub repo id (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--warmup-epochs", type=float, default=None,
                        help="plain-CE epochs first (default: the weighter's meta-training warm-up)")
    args = parser.parse_args()

    x_train, train_labels, x_test, y_test = noisy_digits(seed=0)
    for name, weighter in (("CE", None), (f"weighted ({args.weighter})", args.weighter)):
        model = train(x_train, train_labels, weighter, args.epochs, args.warmup_epochs)
        print(f"clean test accuracy, {name}: {accuracy(model, x_test, y_test):.2%}")


if __name__ == "__main__":
    main()
