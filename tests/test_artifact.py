"""The weighter artifact: round trip, atomic save, strict load, model card, name resolution, local zoo."""

import json
import os
from collections.abc import Callable
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import save_file

from weightzoo.artifact import hub, zoo
from weightzoo.artifact.format import (
    CARD_NAME,
    CONFIG_NAME,
    CURVE_NAME,
    WEIGHTS_NAME,
    WeighterFileError,
    load_artifact,
    read_config,
    save_artifact,
    validate_artifact,
)
from weightzoo.weighting.nets import CMWNet, MWNet

METADATA = {
    "name": "cmwnet-digits-test",
    "source": {"dataset": "digits", "bias": "symmetric-0.4", "bias_report": {"noise": 0.4}},
    "method": {"name": "cmwnet", "meta_lr": 1e-3},
    "families": {"centers": [12.5, 80.0, 170.0], "class_counts": [10, 15, 80, 170]},
    "metrics": {"test_acc": 0.91, "curve": [0.1, None]},
    "seed": 0,
    "description": "ünïcode ✓",
}


def _weighter(seed: int = 0, **config: object) -> CMWNet:
    torch.manual_seed(seed)
    return CMWNet(metadata=METADATA, **config)


def _tree(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _edit_config(directory: Path, **changes: object) -> None:
    path = directory / CONFIG_NAME
    path.write_text(json.dumps(json.loads(path.read_text()) | changes), encoding="utf-8")


def _write_tensors(directory: Path, tensors: dict[str, torch.Tensor]) -> None:
    """A hand-written model.safetensors with metadata agreeing with config.json."""
    config_json = (directory / CONFIG_NAME).read_text(encoding="utf-8").strip()
    save_file(tensors, str(directory / WEIGHTS_NAME),
              metadata={"weightzoo_config": config_json, "weightzoo_schema": "1"})


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    return save_artifact(_weighter(), tmp_path / "w", curve=False)


def test_round_trip_bit_exact(tmp_path: Path) -> None:
    weighter = _weighter()
    with torch.no_grad():  # values that a float32 -> text -> float32 path would not survive
        weighter.heads.bias.copy_(torch.tensor([1e-38, -3.4e38, 0.1]))
    directory = save_artifact(weighter, tmp_path / "w")
    loaded = load_artifact(directory)
    assert type(loaded) is CMWNet
    assert loaded.config == weighter.config and loaded.config.metadata == METADATA
    original, restored = weighter.state_dict(), loaded.state_dict()
    assert restored.keys() == original.keys()
    for name, tensor in original.items():
        assert restored[name].dtype == tensor.dtype and torch.equal(restored[name], tensor)
    assert not loaded.training and all(not p.requires_grad for p in loaded.parameters())
    assert read_config(directory) == weighter.config


def test_mwnet_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    weighter = MWNet(input_norm="none", normalization="mean", source_num_classes=100)
    loaded = load_artifact(save_artifact(weighter, tmp_path / "mw", curve=False))
    assert type(loaded) is MWNet and loaded.config == weighter.config
    losses = torch.linspace(0, 5, 11)
    assert torch.equal(loaded(losses), weighter(losses).detach())


def test_files_present(tmp_path: Path) -> None:
    with_curve = save_artifact(_weighter(), tmp_path / "a")
    assert sorted(os.listdir(with_curve)) == sorted([WEIGHTS_NAME, CONFIG_NAME, CARD_NAME, CURVE_NAME])
    assert (with_curve / CURVE_NAME).read_bytes().startswith(b"\x89PNG")
    without = save_artifact(_weighter(), tmp_path / "b", curve=False)
    assert sorted(os.listdir(without)) == sorted([WEIGHTS_NAME, CONFIG_NAME, CARD_NAME])
    assert "curve.png" not in (without / CARD_NAME).read_text(encoding="utf-8")
    expected = {**_weighter().config.to_dict(), "schema_version": 1}
    assert json.loads((without / CONFIG_NAME).read_text()) == expected
    assert validate_artifact(without).config == _weighter().config


def test_save_over_existing_directory_replaces_it(saved: Path) -> None:
    (saved / "stale.txt").write_text("from the previous weighter")
    save_artifact(_weighter(seed=1, normalization="mean"), saved, curve=False)
    assert not (saved / "stale.txt").exists()
    loaded = load_artifact(saved)
    assert loaded.config.normalization == "mean"
    assert torch.equal(loaded.heads.weight, _weighter(seed=1).heads.weight)
    assert sorted(os.listdir(saved.parent)) == ["w"]  # no temporary or moved-aside dirs


def test_failing_save_leaves_previous_directory_intact(
    saved: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _tree(saved)

    def failing_card(*args: object, **kwargs: object) -> str:
        raise RuntimeError("disk full")

    monkeypatch.setattr("weightzoo.artifact.card.render_model_card", failing_card)
    with pytest.raises(RuntimeError, match="disk full"):
        save_artifact(_weighter(seed=1), saved)
    assert _tree(saved) == before
    assert sorted(os.listdir(saved.parent)) == ["w"]


def test_failing_swap_restores_previous_directory(saved: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without renameat2 the swap is two renames; a failure of the second puts the old back."""
    before = _tree(saved)
    real_replace = os.replace

    def replace(src: str | Path, dst: str | Path) -> None:
        if Path(dst) == saved and ".tmp-" in Path(src).name:
            raise OSError("rename failed")
        real_replace(src, dst)

    monkeypatch.setattr("weightzoo.atomic._EXCHANGE", None)
    monkeypatch.setattr("weightzoo.atomic.os.replace", replace)
    with pytest.raises(OSError, match="rename failed"):
        save_artifact(_weighter(seed=1), saved, curve=False)
    assert _tree(saved) == before
    assert sorted(os.listdir(saved.parent)) == ["w"]


def _hand_tensors(edit: Callable[[dict[str, torch.Tensor]], None]) -> Callable[[Path], None]:
    def corrupt(directory: Path) -> None:
        tensors = dict(_weighter().state_dict())
        edit(tensors)
        _write_tensors(directory, tensors)

    return corrupt


def _truncate(directory: Path) -> None:
    path = directory / WEIGHTS_NAME
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


BAD_FILES: dict[str, tuple[Callable[[Path], None], str, str]] = {
    "missing config": (lambda d: (d / CONFIG_NAME).unlink(), CONFIG_NAME, "missing"),
    "invalid json": (lambda d: (d / CONFIG_NAME).write_text("{not json"), CONFIG_NAME, "not valid JSON"),
    "json not an object": (lambda d: (d / CONFIG_NAME).write_text("[1, 2]"), CONFIG_NAME, "JSON object"),
    "unknown schema": (lambda d: _edit_config(d, schema_version=99), CONFIG_NAME, "schema_version 99"),
    "unknown key": (lambda d: _edit_config(d, temperature=2), CONFIG_NAME, "unknown weighter config keys"),
    "bad value": (lambda d: _edit_config(d, normalization="median"), CONFIG_NAME, "normalization"),
    "float size": (lambda d: _edit_config(d, hidden=100.5), CONFIG_NAME, "hidden must be an integer"),
    "missing weights": (lambda d: (d / WEIGHTS_NAME).unlink(), WEIGHTS_NAME, "missing"),
    "truncated": (_truncate, WEIGHTS_NAME, "not a readable safetensors file"),
    "random bytes": (
        lambda d: (d / WEIGHTS_NAME).write_bytes(os.urandom(4096)), WEIGHTS_NAME, "not a readable",
    ),
    "config disagrees": (
        lambda d: _edit_config(d, normalization="mean"), CONFIG_NAME, f"does not match .*{WEIGHTS_NAME}",
    ),
    "no metadata": (
        lambda d: save_file(_weighter().state_dict(), str(d / WEIGHTS_NAME)),
        WEIGHTS_NAME, "no weightzoo_config",
    ),
    "missing tensor": (
        _hand_tensors(lambda t: t.pop("heads.bias")), WEIGHTS_NAME, "missing: heads.bias;",
    ),
    "unexpected tensor": (
        _hand_tensors(lambda t: t.update(extra=torch.zeros(2))), WEIGHTS_NAME, r"unexpected: extra\)",
    ),
    "wrong shape": (
        _hand_tensors(lambda t: t.update({"heads.weight": torch.zeros(2, 100)})),
        WEIGHTS_NAME, r"heads.weight has shape \(2, 100\).*\(3, 100\)",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_files_raise_naming_the_file(saved: Path, case: str) -> None:
    corrupt, file_name, match = BAD_FILES[case]
    corrupt(saved)
    with pytest.raises(WeighterFileError, match=match) as info:
        load_artifact(saved)
    assert str(saved / file_name) in str(info.value)


def test_validate_artifact_needs_every_file(saved: Path, tmp_path: Path) -> None:
    (saved / CARD_NAME).unlink()
    with pytest.raises(WeighterFileError, match=CARD_NAME):
        validate_artifact(saved)
    with pytest.raises(WeighterFileError, match="not a directory"):
        validate_artifact(tmp_path / "nowhere")


def test_model_card(saved: Path) -> None:
    card = ModelCard.load(saved / CARD_NAME)
    assert card.data.library_name == "weightzoo"
    assert {"weightzoo", "sample-reweighting", "meta-learning", "cmwnet", "noisy-labels"} <= set(
        card.data.tags
    )
    assert card.data.datasets == ["digits"]
    text = card.text
    assert "# cmwnet-digits-test" in text
    assert "`log_classes`" in text and "`sum`" in text
    assert "12.5" in text and "0.91" in text  # family centres and metrics from the metadata
    assert text.count("| small classes | medium classes | large classes |") == 1


def test_model_card_states_measured_transfer(tmp_path: Path) -> None:
    transfer = {"benchmark": "benchmarks/transfer_matrix.py", "date": "2026-11-26 09:00", "seeds": [0, 1, 2],
                "cells": {"digits-mlp sym40": {"acc": 0.90, "ce": 0.85, "best_robust": "gce",
                                               "best_robust_acc": 0.95, "device": "cpu"},
                          "digits-cnn sym40": {"acc": 0.96, "ce": 0.91, "best_robust": "gce",
                                               "best_robust_acc": 0.97, "device": "cpu", "seeds": 10}}}
    weighter = CMWNet(metadata={**METADATA, "transfer": transfer})
    directory = save_artifact(weighter, tmp_path / "w", curve=False)
    text = ModelCard.load(directory / CARD_NAME).text
    assert "## Measured transfer" in text
    # a cell's own seed count, else the record's (written before cells carried one)
    assert "| digits-mlp sym40 | 3 | 90.00 | 85.00 | gce 95.00 | +5.00 | -5.00 |" in text
    assert "| digits-cnn sym40 | 10 | 96.00 | 91.00 | gce 97.00 | +5.00 | -1.00 |" in text
    assert load_artifact(directory).config.metadata["transfer"] == transfer
    assert "Measured transfer" not in ModelCard.load(save_artifact(
        _weighter(), tmp_path / "plain", curve=False) / CARD_NAME).text


def test_model_card_long_tail_tag(tmp_path: Path) -> None:
    torch.manual_seed(0)
    weighter = MWNet(metadata={"source": {"dataset": "cifar10", "bias": "longtail-100"}})
    card = ModelCard.load(save_artifact(weighter, tmp_path / "w", curve=False) / CARD_NAME)
    assert "long-tail" in card.data.tags and "noisy-labels" not in card.data.tags
    assert "mwnet" in card.data.tags


def test_a_batch_mean_weighter_round_trips_and_its_card_says_so(tmp_path: Path) -> None:
    torch.manual_seed(0)
    weighter = CMWNet(num_families=3, input_norm="batch_mean")
    directory = save_artifact(weighter, tmp_path / "w", curve=True)
    loaded = load_artifact(directory)
    assert loaded.config.input_norm == "batch_mean"
    losses, families = torch.rand(8) * 3, torch.arange(8) % 3
    torch.testing.assert_close(loaded(losses, families), weighter(losses, families))
    card = (directory / CARD_NAME).read_text()
    assert "(loss / the mean loss of its batch)" in card
    assert "Weight at losses from 0 to 4 times the batch's mean loss:" in card


def test_resolve_missing_name_lists_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(zoo.ZOO_ENV, raising=False)
    with pytest.raises(hub.WeighterNotFoundError) as info:
        hub.resolve("no-such-weighter")
    message = str(info.value)
    assert "'no-such-weighter' not found" in message
    for place in ("built-in zoo", "local directory 'no-such-weighter'", "local zoo ($WEIGHTZOO_ZOO unset)"):
        assert place in message

    monkeypatch.setenv(zoo.ZOO_ENV, str(tmp_path / "zoo"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(hub.WeighterNotFoundError) as info:
        hub.resolve("org/missing", local_files_only=True)
    message = str(info.value)
    assert f"local zoo {tmp_path / 'zoo'}" in message
    assert "Hub cache for org/missing@main (offline)" in message


def test_resolve_local_directory_and_load(saved: Path) -> None:
    assert hub.resolve(str(saved)) == saved
    loaded = hub.load_pretrained(saved)
    assert torch.equal(loaded.heads.weight, _weighter().heads.weight)


def test_local_zoo_versions(saved: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "zoo"
    first = zoo.publish(saved, root, "lab/cmwnet-digits")
    save_artifact(_weighter(seed=1), saved, curve=False)
    second = zoo.publish(saved, root, "lab/cmwnet-digits")
    assert (first.name, second.name) == ("v0001", "v0002")
    assert zoo.versions(root, "lab/cmwnet-digits") == [1, 2]
    assert sorted(os.listdir(root / "lab" / "cmwnet-digits")) == ["v0001", "v0002"]
    assert zoo.locate(root, "lab/cmwnet-digits") == second
    assert zoo.locate(root, "lab/cmwnet-digits", "v1") == first
    assert zoo.locate(root, "lab/cmwnet-digits", "1") == first
    assert zoo.locate(root, "lab/cmwnet-digits", "v3") is None
    assert zoo.locate(root, "lab/other") is None
    assert _tree(first) != _tree(second)

    monkeypatch.setenv(zoo.ZOO_ENV, str(root))
    assert hub.resolve("lab/cmwnet-digits") == second
    assert hub.resolve("lab/cmwnet-digits@v1") == first
    assert hub.resolve("lab/cmwnet-digits", revision="1") == first
    assert hub.resolve(f"file://{root}/lab/cmwnet-digits@v1") == first


def test_local_zoo_refuses_invalid_directory(saved: Path, tmp_path: Path) -> None:
    root = tmp_path / "zoo"
    (saved / CARD_NAME).unlink()
    with pytest.raises(WeighterFileError, match=CARD_NAME):
        zoo.publish(saved, root, "lab/broken")
    assert zoo.versions(root, "lab/broken") == []
    for name in ("../escape", "lab//x", "lab/a b", ""):
        with pytest.raises(ValueError, match="invalid zoo name"):
            zoo.publish(saved, root, name)
