"""The method registry and step contract: a method defined outside the package (here, in this
test file) trains through ``weightzoo train`` with a recipe, with no edit anywhere else."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from weightzoo.cli.main import cli
from weightzoo.methods.base import Batch, Method, StepOutput
from weightzoo.methods.registry import build_method, method_names, method_spec, register_method
from weightzoo.recipe import load_recipe
from weightzoo.weighting.reduction import LossTerm

SHORT = "[schedule]\nepochs = 2\nbatch_size = 100\nlr = 0.05\n"


@dataclass
class ToyConfig:
    """A multi-class hinge loss plus a small CE term, with input noise as its data view."""

    margin: float = 1.0
    ce_coef: float = 0.1
    input_noise: float = 0.05


@register_method("toy-hinge", ToyConfig, baseline=True, description="test-only hinge method")
class ToyHinge(Method):
    steps_seen: list[tuple[int, tuple[str, ...]]] = []

    def __init__(self, config: ToyConfig) -> None:
        self.config = config

    def collate(self, trainer, index, **info) -> Batch:  # the method's own data view
        batch = super().collate(trainer, index, **info)
        batch.x = batch.x + self.config.input_noise * torch.randn_like(batch.x)
        return batch

    def step(self, trainer, batch: Batch) -> StepOutput:
        logits = trainer.model(batch.x).float()
        true = logits.gather(1, batch.y[:, None])
        hinge = (self.config.margin + logits - true).clamp(min=0).scatter(1, batch.y[:, None], 0.0)
        ce = F.cross_entropy(logits, batch.y, reduction="none")
        return StepOutput(
            {"hinge": LossTerm(hinge.sum(1)), "ce": LossTerm(ce, coef=self.config.ce_coef)},
            logs={"margin_violations": float((hinge > 0).float().mean())},
        )

    def after_step(self, trainer, batch: Batch, output: StepOutput) -> None:
        ToyHinge.steps_seen.append((len(batch.y), tuple(output.terms)))


def test_an_outside_method_trains_through_weightzoo_train(tmp_path: Path) -> None:
    recipe = tmp_path / "toy.toml"
    recipe.write_text('[data]\ndataset = "digits"\nbias = "symmetric:0.2"\n'
                      '[method]\nname = "toy-hinge"\nmargin = 0.5\n' + SHORT)
    ToyHinge.steps_seen.clear()
    result = CliRunner().invoke(cli, ["train", str(recipe), "--out", str(tmp_path / "run"),
                                      "--no-progress", "--json"])
    assert result.exit_code == 0, result.output
    assert "toy-hinge" in json.loads(result.stdout)["results"]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["method"] == "toy-hinge" and metrics["final"]["test_acc"] > 0.5
    row = metrics["history"][-1]
    assert {"hinge_loss", "ce_loss", "margin_violations"} <= set(row)  # named terms are logged
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["recipe"]["method"] == {"name": "toy-hinge", "margin": 0.5, "ce_coef": 0.1,
                                       "input_noise": 0.05}
    assert ToyHinge.steps_seen and ToyHinge.steps_seen[0] == (100, ("hinge", "ce"))
    assert not (tmp_path / "run" / "weighter").exists()  # it publishes nothing
    listed = CliRunner().invoke(cli, ["methods", "--json"])
    assert "toy-hinge" in {row["name"] for row in json.loads(listed.stdout)}


def test_the_method_table_is_validated_by_the_method_config(tmp_path: Path) -> None:
    recipe = tmp_path / "bad.toml"
    recipe.write_text('[method]\nname = "toy-hinge"\nmargn = 0.5\n')
    with pytest.raises(ValueError, match=r"bad.toml: unknown key\(s\) method.margn"):
        load_recipe(recipe)
    recipe.write_text('[method]\nname = "toy-hinge"\nmargin = "wide"\n')
    with pytest.raises(ValueError, match="bad.toml: method.margin = 'wide' has the wrong type"):
        load_recipe(recipe)
    recipe.write_text('[method]\nname = "gce"\nq = 0.5\n[meta]\nmeta_lr = 1e-3\n')
    with pytest.raises(ValueError, match="bad.toml: \\[meta\\] is for meta-learning methods"):
        load_recipe(recipe)


def test_registry_rules() -> None:
    assert {"ce", "gce", "frozen", "mwnet", "cmwnet", "toy-hinge"} <= set(method_names())
    assert "mwnet" not in method_names(baseline=True) and "gce" in method_names(baseline=True)
    with pytest.raises(ValueError, match="already registered"):
        register_method("gce", ToyConfig)(ToyHinge)
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        method_spec("nope")
    gce = build_method("gce", method_spec("gce").parse({"q": 0.3}, "test"))
    assert gce.name == "gce" and gce.params == {"q": 0.3}
    assert method_spec("mwnet").parse({"num_families": 3}, "old recipe").num_families == 1


def test_recipe_imports_register_methods_from_a_module(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "plugin_methods.py").write_text(
        "from dataclasses import dataclass\n"
        "from weightzoo.methods.registry import register_method\n"
        "from weightzoo.methods.plain import PlainLoss\n"
        "@dataclass\nclass C:\n    q: float = 0.4\n"
        "register_method('plugin-gce', C)(lambda c: PlainLoss('gce', q=c.q))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    recipe = tmp_path / "plugin.toml"
    recipe.write_text('imports = ["plugin_methods"]\n[method]\nname = "plugin-gce"\nq = 0.6\n')
    loaded = load_recipe(recipe)
    assert loaded.method.name == "plugin-gce" and loaded.method.build().params == {"q": 0.6}
    recipe.write_text('imports = ["no_such_module_here"]\n')
    with pytest.raises(ValueError, match="cannot import 'no_such_module_here'"):
        load_recipe(recipe)


def test_switching_the_method_with_set_drops_the_other_methods_options() -> None:
    recipe = load_recipe("digits-sym40-mwnet", ["method.name=gce", "method.q=0.5"])
    assert recipe.method.name == "gce" and recipe.method.config.q == 0.5
    assert recipe.held_out_per_class() == 10  # the same data as the MW-Net run: meta set held out
    assert load_recipe("digits-sym40-mwnet", ["method.name=cmwnet"]).method.config.meta.per_class == 10
    assert load_recipe("digits-sym40-mwnet", ["method.name=l2rw"]).held_out_per_class() == 10
    with pytest.raises(ValueError, match="meta_per_class must be >= 0"):
        load_recipe("digits-sym40-mwnet", ["data.meta_per_class=-1"])
    with pytest.raises(ValueError, match=r"--set meta.meta_lr=nan: .*finite"):
        load_recipe("digits-sym40-mwnet", ["meta.meta_lr=nan"])
