"""Recipes: shipped ones validate; errors name the file and the key; --set overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from weightzoo.data.bias import BiasSpec
from weightzoo.data.sources import DATASET_DESCRIPTIONS
from weightzoo.methods.registry import method_names
from weightzoo.models import MODEL_DESCRIPTIONS
from weightzoo.recipe import Recipe, builtin_recipes, load_recipe, recipe_from_dict

DIGITS = Path(__file__).resolve().parents[1] / "recipes" / "digits-sym40-mwnet.toml"


def write(tmp_path: Path, text: str, name: str = "mine.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------
# shipped recipes


def test_shipped_recipes_are_found() -> None:
    shipped = builtin_recipes()
    assert "digits-sym40-mwnet" in shipped
    assert len(shipped) >= 3
    assert all(p.suffix == ".toml" and p.is_file() for p in shipped.values())


@pytest.mark.parametrize("name", sorted(builtin_recipes()))
def test_every_shipped_recipe_loads_and_validates(name: str) -> None:
    recipe = load_recipe(name)
    assert recipe.name == name  # defaults to the file's stem
    assert recipe.description
    assert recipe.method.name in method_names()
    BiasSpec.parse(recipe.data.bias)  # the bias spec parses
    assert recipe.data.dataset in DATASET_DESCRIPTIONS
    assert recipe.model["name"] in MODEL_DESCRIPTIONS
    sched = recipe.schedule
    assert all(0 < m < sched.epochs for m in sched.milestones)
    assert sched.milestones == sorted(sched.milestones)
    assert 0 <= sched.warmup_epochs < sched.epochs
    # the recorded form (run.json) builds the same recipe again
    assert recipe_from_dict(recipe.to_dict()) == recipe


def test_digits_recipe_values() -> None:
    recipe = load_recipe("digits-sym40-mwnet")
    assert (recipe.data.dataset, recipe.data.bias) == ("digits", "symmetric:0.4")
    assert recipe.method.spec.publishes and recipe.method.name == "mwnet"
    assert recipe.method.config.meta.source == "clean" and recipe.method.config.meta.per_class == 10
    assert recipe.schedule.epochs == 30 and recipe.schedule.milestones == [20, 25]
    assert isinstance(recipe.method.config.meta.meta_lr, float)


def test_recipe_by_path(tmp_path: Path) -> None:
    path = write(tmp_path, 'description = "x"\n[data]\nbias = "longtail:10"\n'
                           '[method]\nname = "ce"\n[schedule]\nepochs = 2\n')
    recipe = load_recipe(path)
    assert recipe.name == "mine"
    assert recipe.data.dataset == "digits" and recipe.data.bias == "longtail:10"
    assert not recipe.method.spec.publishes and recipe.schedule.epochs == 2
    assert load_recipe(str(path)) == recipe
    named = write(tmp_path, 'name = "custom"\n', "other.toml")
    assert load_recipe(named).name == "custom"
    assert load_recipe(DIGITS) == load_recipe("digits-sym40-mwnet")


# ----------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize(("text", "needle"), [
    ("[foo]\nx = 1\n", "foo"),
    ("[schedule]\nepoch = 3\n", "schedule.epoch"),
    ("[meta]\nmeta_rate = 0.1\n", "meta.meta_rate"),
    ("[data]\ndataset = \"digits\"\nbias_spec = \"none\"\n", "data.bias_spec"),
    ("colour = \"red\"\n", "colour"),
])
def test_unknown_section_or_key(tmp_path: Path, text: str, needle: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ValueError, match="unknown key") as info:
        load_recipe(path)
    assert str(path) in str(info.value)
    assert needle in str(info.value)


@pytest.mark.parametrize(("text", "needle"), [
    ('[schedule]\nepochs = "ten"\n', "schedule.epochs"),
    ("[schedule]\nepochs = 2.5\n", "schedule.epochs"),
    ("[schedule]\nepochs = true\n", "schedule.epochs"),
    ("[schedule]\nmilestones = 5\n", "schedule.milestones"),
    ('[schedule]\nmilestones = [1, "x"]\n', "schedule.milestones"),
    ('[meta]\nmeta_lr = "fast"\n', "meta.meta_lr"),
    ("seed = 1.0\n", "seed"),
    ('schedule = "fast"\n', "schedule"),
    ('model = "mlp"\n', "model"),
])
def test_wrong_types(tmp_path: Path, text: str, needle: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ValueError) as info:
        load_recipe(path)
    message = str(info.value)
    assert str(path) in message and needle in message
    assert "wrong type" in message or "must be a table" in message


def test_ints_are_accepted_as_floats(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, "[schedule]\nlr = 1\n[meta]\nmeta_lr = 0\n"))
    assert recipe.schedule.lr == 1.0 and isinstance(recipe.schedule.lr, float)


@pytest.mark.parametrize(("text", "needle"), [
    ('[method]\nname = "magic"\n', "unknown method 'magic'"),
    ('[method]\nnormalization = "median"\n', "method.normalization"),
    ('[method]\ninput_norm = "sqrt"\n', "method.input_norm"),
    ('[meta]\nsource = "web"\n', "meta.source"),
    ("[model]\nhidden = [8]\n", "needs a name"),
    ("[schedule]\nepochs = 0\n", "schedule.epochs"),
    ("[meta]\nper_class = 0\n", "meta.per_class"),
    ("[meta]\nmeta_interval = 0\n", "meta.meta_interval"),
    ("[meta]\nmeta_batch_size = 0\n", "meta.meta_batch_size"),
    ("[schedule]\nepochs = 2\nwarmup_epochs = 2\n", "schedule.warmup_epochs (2)"),
])
def test_invalid_values_name_the_file(tmp_path: Path, text: str, needle: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ValueError) as info:
        load_recipe(path)
    assert str(path) in str(info.value)
    assert needle in str(info.value)


def test_warmup_only_matters_for_meta_methods(tmp_path: Path) -> None:
    text = "[method]\nname = \"ce\"\n[schedule]\nepochs = 1\nwarmup_epochs = 1\n"
    assert load_recipe(write(tmp_path, text)).schedule.warmup_epochs == 1


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[schedule\nepochs = 3\n")
    with pytest.raises(ValueError, match="invalid TOML") as info:
        load_recipe(path)
    assert str(path) in str(info.value)


def test_unknown_recipe_name_lists_the_shipped_ones() -> None:
    with pytest.raises(ValueError, match="no recipe 'nope'") as info:
        load_recipe("nope")
    assert "digits-sym40-mwnet" in str(info.value)


def test_validate_without_a_file() -> None:
    recipe = Recipe()
    recipe.validate()
    recipe.method.name = "magic"
    with pytest.raises(ValueError, match="recipe 'recipe': unknown method"):
        recipe.validate()


# ----------------------------------------------------------------------------------------
# overrides


def test_overrides() -> None:
    recipe = load_recipe("digits-sym40-mwnet", [
        "schedule.epochs=3", "meta.meta_lr=1e-4", "data.bias=longtail:10",
        "schedule.milestones=[1, 2]", "seed=5", "model.hidden=[32, 16]",
        "schedule.augment=true", "name=shortened", "method.name=cmwnet",
        " description = two words ",
    ])
    assert recipe.schedule.epochs == 3
    assert recipe.method.config.meta.meta_lr == pytest.approx(1e-4)
    assert recipe.data.bias == "longtail:10"
    assert recipe.schedule.milestones == [1, 2]
    assert recipe.seed == 5
    assert recipe.model == {"name": "mlp", "hidden": [32, 16]}
    assert recipe.schedule.augment is True
    assert recipe.name == "shortened" and recipe.method.name == "cmwnet"
    assert recipe.description.strip() == "two words"
    # untouched values stay
    assert recipe.schedule.batch_size == 100 and recipe.method.config.meta.per_class == 10


def test_override_adds_a_missing_section(tmp_path: Path) -> None:
    path = write(tmp_path, "seed = 0\n")
    recipe = load_recipe(path, ["meta.source=train", "meta.mixup_alpha=1"])
    assert recipe.method.config.meta.source == "train" and recipe.method.config.meta.mixup_alpha == 1.0


@pytest.mark.parametrize(("item", "needle"), [
    ("schedule.epochs", "key=value"),
    ("=3", "key=value"),
    ("schedule.epoch=3", "schedule.epoch"),
    ("schedule.epochs=ten", "schedule.epochs"),
    ("method.name=magic", "unknown method"),
    ("seed.x=1", "not a section"),
])
def test_bad_overrides(item: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        load_recipe("digits-sym40-mwnet", [item])
