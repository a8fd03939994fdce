"""The shipped zoo: every weighter in pretrained/ loads by name, shows, plots, and its
recorded metrics file agrees with its model card and config."""

from __future__ import annotations

import json
import re

import pytest
import torch
from click.testing import CliRunner
from huggingface_hub import ModelCard
from PIL import Image

from weightzoo import LearnedRobustLoss, WeightedLoss, load_pretrained
from weightzoo.artifact import hub
from weightzoo.cli.main import cli

SHIPPED = hub.builtin_names()
EXPECTED = {"mwnet-fmnist-sym40", "mwnet-fmnist-longtail", "cmwnet-fmnist-asym40",
            "cmwnet-fmnist-longtail-noise", "cmwnet-fmnist-mixed", "cmwnet-sl-fmnist-sym40",
            "arl-gce-fmnist-sym40", "cmwnet-sce-fmnist-longtail-noise", "cmwnet-fmnist-longtail",
            "cmwnet-fmnist-partial30", "cmwnet-fmnist-multi", "cmwnet-sl-fmnist-multi",
            "arl-gce-fmnist-multi", "cmwnet-cb-fmnist-longtail"}
LEARNED_LOSSES = {"arl-gce-fmnist-sym40", "arl-gce-fmnist-multi"}


def test_zoo_has_the_weighters_and_the_learned_loss() -> None:
    assert EXPECTED <= set(SHIPPED)
    assert load_pretrained("cmwnet-sl-fmnist-sym40").config.base_loss == "sl"
    sce = WeightedLoss.from_pretrained("cmwnet-sce-fmnist-longtail-noise", class_counts=[50] * 5 + [5] * 5)
    assert sce.base_loss == "sce"  # applied with the loss it was meta-trained to weight
    balanced = WeightedLoss.from_pretrained("cmwnet-cb-fmnist-longtail", class_counts=[50] * 5 + [5] * 5)
    assert balanced.base_loss == "class-balanced"  # class weights from these counts


@pytest.mark.parametrize("name", SHIPPED)
def test_transfer_records_render_in_the_card(name: str) -> None:
    transfer = load_pretrained(name).config.metadata.get("transfer", {})
    text = (hub.builtin_root() / name / "README.md").read_text()
    assert ("## Measured transfer" in text) == bool(transfer)
    for cell in transfer.get("cells", {}):
        assert f"| {cell} |" in text


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_weighter_loads_and_applies(name: str) -> None:
    weighter = load_pretrained(name)
    meta = weighter.config.metadata
    assert meta["source"]["dataset"] == "fashion-mnist"
    assert meta["command"].startswith("weightzoo train ")
    if name in LEARNED_LOSSES:
        loss = LearnedRobustLoss.from_pretrained(name)
        assert loss(torch.randn(4, 10), torch.tensor([0, 1, 2, 3])).shape == (4,)
        return
    crit = WeightedLoss.from_pretrained(name, class_counts=[50, 40, 30, 20, 10, 5, 5, 5, 2, 1])
    assert crit.family_of_class.numel() == 10


@pytest.mark.parametrize("name", SHIPPED)
def test_metrics_file_agrees_with_card_and_config(name: str) -> None:
    root = hub.builtin_root() / name
    recorded = json.loads((root / "metrics.json").read_text())["final"]
    config_metrics = load_pretrained(name).config.metadata["metrics"]
    for key, value in config_metrics.items():
        if key == "sources":  # a multi-source entry: each source's metrics, as written
            assert recorded[key] == value
        else:
            assert recorded[key] == pytest.approx(value), key
    card = ModelCard.load(root / "README.md")
    assert card.data.library_name == "weightzoo"
    block = re.search(r"## Metrics\s+```json\n(.*?)\n```", card.text, re.S)
    assert block is not None
    card_metrics = json.loads(block.group(1))
    assert card_metrics["weighter"]["test_acc"] == pytest.approx(recorded["test_acc"])
    baseline = [key for key in card_metrics if key.endswith("_baseline")]  # ce_, fixmatch_baseline
    assert len(baseline) == 1 and card_metrics[baseline[0]]["test_acc"] > 0


@pytest.mark.parametrize("name", SHIPPED)
def test_show_and_plot(name: str, tmp_path) -> None:
    runner = CliRunner()
    shown = runner.invoke(cli, ["show", name, "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["config"]["kind"] in ("mwnet", "cmwnet", "robust-loss")
    png = tmp_path / "c.png"
    plotted = runner.invoke(cli, ["plot", name, "-o", str(png), "--width", "320", "--height", "240"])
    assert plotted.exit_code == 0, plotted.output
    assert Image.open(png).size == (320, 240)


def test_list_shows_the_zoo_with_descriptions() -> None:
    listed = CliRunner().invoke(cli, ["list", "--json"])
    rows = {r["name"]: r for r in json.loads(listed.output)}
    for name in EXPECTED:
        assert rows[name]["where"] == "builtin" and rows[name]["description"]
