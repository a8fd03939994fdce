"""Atomic training checkpoints (local resume state, never a user-facing artifact)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from weightzoo.atomic import atomic_write

CHECKPOINT_NAME = "checkpoint.pt"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` via a temporary file and an atomic rename."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors and plain data only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint to resume from")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a corrupt file
        # torch's own message spans many lines and suggests weights_only=False (unsafe for a
        # file that failed the safe loader): keep the reason to one line.
        raise ValueError(
            f"{path}: unreadable or corrupt checkpoint ({type(err).__name__}); delete it to "
            "start afresh"
        ) from err
