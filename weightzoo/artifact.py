"""The weighter artifact: the one place that defines its on-disk format.

A weighter directory holds
- ``model.safetensors``: the tensors; its ``__metadata__`` carries the config as JSON
  under ``weightzoo_config`` (and the schema version under ``weightzoo_schema``);
- ``config.json``: the same config, human-readable;
- ``README.md``: the generated model card;
- ``curve.png``: the learned weight-vs-loss curves (optional).

Loading is strict: a missing file, a truncated or non-safetensors file, an unknown schema
version, config.json disagreeing with the tensors' metadata, or missing/unexpected/
misshapen tensors each raise :class:`WeighterFileError` naming the file.
Saving is atomic: files are written to a temporary sibling directory that then replaces
the target, so a crash never leaves a half-written weighter behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from weightzoo.weighters import SCHEMA_VERSION, CMWNet, WeighterConfig, build_weighter

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
CURVE_NAME = "curve.png"
ARTIFACT_FILES = (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME)


class WeighterFileError(ValueError):
    """A weighter file is missing, corrupt, or does not match its config."""


def save_weighter(
    weighter: CMWNet, directory: str | Path, *, curve: bool = True,
    extra_files: dict[str, Callable[[Path], None]] | None = None,
) -> Path:
    """Write the artifact to ``directory`` atomically; returns the directory.

    extra_files: name -> writer(path) for additional files (e.g. metrics) written into
    the same atomic swap.
    """
    from weightzoo.card import render_model_card
    from weightzoo.plotting import plot_curves

    target = Path(directory).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        config = weighter.config.to_dict()
        config_json = json.dumps(config, indent=2, sort_keys=True)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in weighter.state_dict().items()}
        save_file(
            tensors, str(tmp / WEIGHTS_NAME),
            metadata={"weightzoo_config": config_json, "weightzoo_schema": str(SCHEMA_VERSION)},
        )
        (tmp / CONFIG_NAME).write_text(config_json + "\n", encoding="utf-8")
        if curve:
            plot_curves(weighter, tmp / CURVE_NAME)
        for name, writer in (extra_files or {}).items():
            writer(tmp / name)
        (tmp / CARD_NAME).write_text(
            render_model_card(weighter, has_curve=curve), encoding="utf-8"
        )
        _replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _replace_dir(new: Path, target: Path) -> None:
    """Swap ``new`` into ``target``: an existing target is moved aside first, then removed."""
    if not target.exists():
        os.replace(new, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.replace(target, old / "x")
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(old / "x", target)  # put the previous weighter back
        old.rmdir()
        raise
    shutil.rmtree(old, ignore_errors=True)


def read_config(directory: str | Path) -> WeighterConfig:
    """Parse and validate ``config.json`` of a weighter directory."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise WeighterFileError(f"{path}: missing (not a weighter directory?)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise WeighterFileError(f"{path}: not valid JSON ({err})") from None
    return _config_from_dict(data, path)


def _config_from_dict(data: object, path: Path) -> WeighterConfig:
    if not isinstance(data, dict):
        raise WeighterFileError(f"{path}: expected a JSON object")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise WeighterFileError(
            f"{path}: unknown schema_version {version!r} (this weightzoo reads {SCHEMA_VERSION}); "
            "upgrade weightzoo or re-export the weighter"
        )
    try:
        return WeighterConfig.from_dict(data)
    except (TypeError, ValueError) as err:
        raise WeighterFileError(f"{path}: invalid config ({err})") from None


def load_weighter(directory: str | Path, map_location: str | torch.device = "cpu") -> CMWNet:
    """Load a weighter directory strictly; raises :class:`WeighterFileError` on any mismatch."""
    directory = Path(directory)
    config = read_config(directory)
    weights_path = directory / WEIGHTS_NAME
    if not weights_path.is_file():
        raise WeighterFileError(f"{weights_path}: missing")
    try:
        with safe_open(str(weights_path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise WeighterFileError(
            f"{weights_path}: not a readable safetensors file ({err})"
        ) from None
    meta_json = metadata.get("weightzoo_config")
    if meta_json is None:
        raise WeighterFileError(f"{weights_path}: no weightzoo_config in the safetensors metadata")
    try:
        meta_config = _config_from_dict(json.loads(meta_json), weights_path)
    except json.JSONDecodeError as err:
        raise WeighterFileError(f"{weights_path}: metadata config is not JSON ({err})") from None
    if meta_config != config:
        raise WeighterFileError(
            f"{directory / CONFIG_NAME}: does not match the config stored in {WEIGHTS_NAME} "
            "(files from different weighters?)"
        )
    weighter = build_weighter(config)
    expected = weighter.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise WeighterFileError(
            f"{weights_path}: tensors do not match the config "
            f"(missing: {missing or 'none'}; unexpected: {unexpected or 'none'})"
        )
    for key, value in tensors.items():
        if value.shape != expected[key].shape:
            raise WeighterFileError(
                f"{weights_path}: tensor {key} has shape {tuple(value.shape)}, the config implies "
                f"{tuple(expected[key].shape)}"
            )
    weighter.load_state_dict(tensors, strict=True)
    weighter.requires_grad_(False)
    return weighter.to(map_location).eval()


def validate_artifact(directory: str | Path) -> CMWNet:
    """Check a directory is a complete weighter artifact (all files present, loads strictly)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise WeighterFileError(f"{directory}: not a directory")
    for name in ARTIFACT_FILES:
        if not (directory / name).is_file():
            raise WeighterFileError(f"{directory / name}: missing")
    return load_weighter(directory)
