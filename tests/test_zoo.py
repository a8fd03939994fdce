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


@pytest.mark.parametrize("bias", ["symmetric", "asymmetric", "longtail", "longtail+noise"])
def test_recommend_picks_a_shipped_entry_with_its_measured_cells(bias: str) -> None:
    from weightzoo import recommend
    from weightzoo.artifact.recommend import RULE

    pick = recommend(bias)
    assert pick.entry in SHIPPED and pick.entry == RULE[bias][1]
    assert pick.kind == ("learned loss" if pick.entry in LEARNED_LOSSES else "weighter")
    recorded = load_pretrained(pick.entry).config.metadata["transfer"]["cells"]
    # every target of the matrix, this bias only, applied as the rule says, as the card records them
    assert len(pick.cells) == 4 and {c.cell.split(" ")[1] for c in pick.cells} == {RULE[bias][0]}
    assert pick.rebalance == RULE[bias][2]
    assert all(c.cell.endswith(" deferred") == (pick.rebalance == "deferred") for c in pick.cells)
    assert all((c.best_drw is not None) == (pick.rebalance == "deferred") for c in pick.cells)
    for cell in pick.cells:
        assert cell.acc == recorded[cell.cell]["acc"] and cell.ce == recorded[cell.cell]["ce"]
        assert cell.seeds >= 3  # every cell of the matrix has at least 3 paired seeds
    assert pick.beats_ce == sum(c.acc > c.ce for c in pick.cells)
    shown = CliRunner().invoke(cli, ["recommend", bias, "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["entry"] == pick.entry
    text = CliRunner().invoke(cli, ["recommend", bias]).output
    assert pick.entry in text and f"beats CE in {pick.beats_ce} of 4" in text
    assert ("--rebalance deferred" in text) == (pick.rebalance == "deferred")
    assert ("plain `" in text) == (pick.stronger_robust_loss is not None)


def test_recommend_names_the_robust_loss_that_wins_most_cells() -> None:
    from weightzoo.artifact.recommend import MeasuredCell, Recommendation

    def cells(*rows: tuple[float, str, float]) -> tuple[MeasuredCell, ...]:
        return tuple(MeasuredCell(f"t{i} sym40", acc, 0.5, robust, best)
                     for i, (acc, robust, best) in enumerate(rows))

    behind = Recommendation("symmetric", "x", "weighter", "v", "none",
                            cells((0.8, "gce", 0.9), (0.8, "sce", 0.85), (0.8, "gce", 0.81),
                                  (0.9, "gce", 0.8)))
    assert behind.stronger_robust_loss == "gce" and behind.ahead_of_robust == 1 and behind.beats_ce == 4
    level = Recommendation("symmetric", "x", "weighter", "v", "none",
                           cells((0.8, "gce", 0.9), (0.9, "sce", 0.9)))
    assert level.stronger_robust_loss is None  # behind in half the cells only
    with pytest.raises(ValueError, match="unknown bias 'pair'; declare one of symmetric"):
        from weightzoo import recommend

        recommend("pair")
    assert CliRunner().invoke(cli, ["recommend", "pair"]).exit_code == 2
