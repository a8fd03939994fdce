"""The artifact format: the one place that defines an artifact directory on disk.

Artifacts are weighters (``kind`` ``mwnet`` / ``cmwnet``) and learned robust losses
(``robust-loss``); the config's ``kind`` says which class loads it. A directory holds
- ``model.safetensors``: the tensors; its ``__metadata__`` carries the config as JSON
  under ``weightzoo_config`` (and the schema version under ``weightzoo_schema``);
- ``config.json``: the same config, human-readable, with ``schema_version``;
- ``README.md``: the generated model card;
- ``curve.png``: the learned weight-vs-loss curves (optional).

The config's ``metadata`` is the run's provenance, a :class:`Provenance` record.
Loading is strict: a missing file, a truncated or non-safetensors file, an unknown schema
version, a config key missing or unknown, config.json disagreeing with the tensors'
metadata, missing / unexpected / misshapen tensors, or a non-finite value in a tensor each
raise :class:`WeighterFileError` naming the file (and the key or tensor).
Saving is atomic (:mod:`weightzoo.atomic`): the name always resolves to the old or the new
complete artifact.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from weightzoo.atomic import json_safe, recover, staging_dir, swap_in
from weightzoo.typed_tables import from_known_keys, short_list
from weightzoo.weighting.learned_loss import LearnedRobustLoss, RobustLossConfig
from weightzoo.weighting.nets import CMWNet, WeighterConfig, build_weighter

Artifact = CMWNet | LearnedRobustLoss
ArtifactConfig = WeighterConfig | RobustLossConfig
# config "kind" -> (its config class, the builder of an untrained artifact from a config)
KINDS: dict[str, tuple[type, Callable[[Any], Artifact]]] = {
    "mwnet": (WeighterConfig, build_weighter),
    "cmwnet": (WeighterConfig, build_weighter),
    "robust-loss": (RobustLossConfig, LearnedRobustLoss.from_config),
}

SCHEMA_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
CURVE_NAME = "curve.png"
ARTIFACT_FILES = (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME)
HUB_FILES = (*ARTIFACT_FILES, CURVE_NAME)


class WeighterFileError(ValueError):
    """An artifact file is missing, corrupt, or does not match its config."""


@dataclass
class Provenance:
    """Where a weighter comes from; stored as ``config.metadata`` and rendered in the card.

    source: dataset, bias spec, bias report, n_train, n_meta.
    method: method name, its config, the schedule and the model.
    families: the source data's task families (centres, family of each class).
    metrics: final metrics of the training run; baseline: CE on identical data.
    transfer: measured frozen use on other data (``benchmarks/transfer_matrix.py``): the
        benchmark, date and per cell (target, bias) this entry's test accuracy next to CE's
        and the best robust loss's (means over the cell's ``seeds``); rendered in the card.
    """

    name: str = ""
    description: str = ""
    source: dict[str, Any] = field(default_factory=dict)
    method: dict[str, Any] = field(default_factory=dict)
    families: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    baseline: dict[str, Any] = field(default_factory=dict)
    command: str | None = None
    seed: int | None = None
    transfer: dict[str, Any] = field(default_factory=dict)

    def to_metadata(self) -> dict[str, Any]:
        return json_safe(asdict(self))

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> Provenance:
        """Read ``config.metadata``; unknown keys are an error (a file from another tool)."""
        return from_known_keys(cls, metadata, "metadata")


def config_json(config: ArtifactConfig) -> str:
    """The config as written to config.json and to the safetensors metadata."""
    return json.dumps({**config.to_dict(), "schema_version": SCHEMA_VERSION}, indent=2, sort_keys=True)


def save_artifact(weighter: Artifact, directory: str | Path, *, curve: bool = True) -> Path:
    """Write the artifact to ``directory`` atomically; returns the directory."""
    from weightzoo.artifact.card import render_model_card
    from weightzoo.artifact.curve import plot_curves

    target = Path(directory).resolve()
    with staging_dir(target) as tmp:
        text = config_json(weighter.config)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in weighter.state_dict().items()}
        save_file(
            tensors, str(tmp / WEIGHTS_NAME),
            metadata={"weightzoo_config": text, "weightzoo_schema": str(SCHEMA_VERSION)},
        )
        (tmp / CONFIG_NAME).write_text(text + "\n", encoding="utf-8")
        if curve:
            plot_curves(weighter, tmp / CURVE_NAME)
        (tmp / CARD_NAME).write_text(render_model_card(weighter, has_curve=curve), encoding="utf-8")
        swap_in(tmp, target)
    return target


def read_config(directory: str | Path) -> ArtifactConfig:
    """Parse and validate ``config.json`` of an artifact directory."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise WeighterFileError(f"{path}: missing (not a weighter directory?)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise WeighterFileError(f"{path}: not valid JSON ({err})") from None
    return _config_from_dict(data, path)


def _config_from_dict(data: object, path: Path) -> ArtifactConfig:
    if not isinstance(data, dict):
        raise WeighterFileError(f"{path}: expected a JSON object")
    data = dict(data)
    version = data.pop("schema_version", None)
    if version != SCHEMA_VERSION:
        raise WeighterFileError(
            f"{path}: unknown schema_version {version!r} (this weightzoo reads {SCHEMA_VERSION}); "
            "upgrade weightzoo or re-export the weighter"
        )
    kind = data.get("kind")
    if kind not in KINDS:
        raise WeighterFileError(f"{path}: unknown artifact kind {kind!r}; one of {', '.join(KINDS)}")
    config_class = KINDS[kind][0]
    missing = sorted({f.name for f in fields(config_class)} - set(data))
    if missing:
        raise WeighterFileError(f"{path}: config key(s) missing: {short_list(missing)}")
    try:
        config = config_class.from_dict(data)
        Provenance.from_metadata(config.metadata)
    except (TypeError, ValueError) as err:
        raise WeighterFileError(f"{path}: invalid config ({err})") from None
    return config


def _read_tensors(weights_path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    try:
        with safe_open(str(weights_path), framework="pt", device="cpu") as f:
            return f.metadata() or {}, {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise WeighterFileError(f"{weights_path}: not a readable safetensors file ({err})") from None


def load_artifact(directory: str | Path, map_location: str | torch.device = "cpu") -> Artifact:
    """Load an artifact directory strictly; raises :class:`WeighterFileError` on any mismatch."""
    directory = Path(directory)
    recover(directory)
    config = read_config(directory)
    weights_path = directory / WEIGHTS_NAME
    if not weights_path.is_file():
        raise WeighterFileError(f"{weights_path}: missing")
    metadata, tensors = _read_tensors(weights_path)
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
    weighter = KINDS[config.kind][1](config)
    expected = weighter.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise WeighterFileError(
            f"{weights_path}: tensors do not match the config "
            f"(missing: {short_list(missing) or 'none'}; unexpected: {short_list(unexpected) or 'none'})"
        )
    for key, value in tensors.items():
        if value.shape != expected[key].shape:
            raise WeighterFileError(
                f"{weights_path}: tensor {key} has shape {tuple(value.shape)}, the config implies "
                f"{tuple(expected[key].shape)}"
            )
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise WeighterFileError(f"{weights_path}: tensor {key} holds NaN or inf values")
    weighter.load_state_dict(tensors, strict=True)
    weighter.requires_grad_(False)
    return weighter.to(map_location).eval()


def validate_artifact(directory: str | Path) -> Artifact:
    """Check a directory is a complete artifact (all files present, loads strictly)."""
    directory = Path(directory)
    recover(directory)
    if not directory.is_dir():
        raise WeighterFileError(f"{directory}: not a directory")
    for name in ARTIFACT_FILES:
        if not (directory / name).is_file():
            raise WeighterFileError(f"{directory / name}: missing")
    return load_artifact(directory)
