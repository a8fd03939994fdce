"""Partial-label learning: candidate-set generation and checks, PRODEN, the two-stage regime."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from weightzoo.artifact.card import card_tags
from weightzoo.artifact.format import Provenance, load_artifact
from weightzoo.cli.main import cli
from weightzoo.data.bias import BiasSpec, inject_bias
from weightzoo.data.partial import candidate_sets, check_candidates, expected_set_size
from weightzoo.data.sources import load_dataset
from weightzoo.methods.meta_weighting import MetaConfig, MetaWeighting, MetaWeightingConfig
from weightzoo.methods.proden import Proden, restricted_softmax
from weightzoo.partial_regime import relabelled, singleton_meta_set
from weightzoo.pipeline import prepare_data, train_recipe
from weightzoo.recipe import load_recipe
from weightzoo.training.engine import Schedule, Trainer

FAST = Schedule(epochs=2, batch_size=50, lr=0.1, milestones=[], amp=False)


@pytest.mark.parametrize(("kind", "q"), [("partial", 0.1), ("partial", 0.5), ("partial-pair", 0.3)])
def test_generated_sets_hold_the_true_label_and_have_the_expected_size(kind: str, q: float) -> None:
    labels = np.random.default_rng(0).integers(0, 10, size=20_000)
    sets = candidate_sets(labels, 10, kind, q, np.random.default_rng(1))
    assert sets[np.arange(len(labels)), labels].all()
    assert sets.sum(1).mean() == pytest.approx(expected_set_size(kind, q, 10), abs=0.03)
    if kind == "partial":
        assert sets.sum(1).min() >= 2  # PRODEN's rule: no secretly clean sample
    else:
        extra = sets.copy()
        extra[np.arange(len(labels)), labels] = False
        assert (extra.argmax(1)[extra.any(1)] == (labels[extra.any(1)] + 1) % 10).all()


def test_partial_bias_is_seeded_reported_and_composes_with_longtail_only() -> None:
    x, y = torch.randn(600, 4), torch.arange(6).repeat(100)
    a, b = (inject_bias(x, y, 6, "longtail:5+partial:0.3", seed=3) for _ in range(2))
    assert a.candidates is not None and torch.equal(a.candidates, b.candidates)
    assert torch.equal(a.labels, b.labels)
    assert a.candidates[torch.arange(len(a.labels)), a.labels].all()  # the label as given is a candidate
    assert a.report["stages"][-1]["mean_set_size"] == pytest.approx(float(a.candidates.sum(1).float().mean()))
    assert len(a.labels) < 600  # the long tail was applied first
    with pytest.raises(ValueError, match="combines with longtail only"):
        BiasSpec.parse("symmetric:0.2+partial:0.3")


@pytest.mark.parametrize(("sets", "labels", "match"), [
    ([[1, 0, 0], [0, 0, 0]], None, "empty candidate sets"),
    ([[1, 1, 0], [0, 1, 1]], [0, 0], "miss their true label"),
    ([[1, 0, 0, 1], [0, 1, 0, 0]], None, "model cannot output"),
    ([[1, 2, 0], [0, 1, 0]], None, "only 0 and 1"),
])
def test_bad_candidate_sets_are_refused(sets: list, labels: list | None, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_candidates(np.array(sets), 3, None if labels is None else np.array(labels))


def test_restricted_softmax_is_a_distribution_on_the_set() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, -200.0, -300.0]])
    sets = torch.tensor([[True, False, True], [False, True, True]])
    q = restricted_softmax(logits, sets)
    assert torch.allclose(q.sum(1), torch.ones(2))
    assert (q[~sets] == 0).all()
    assert torch.allclose(q[0, [0, 2]], torch.softmax(torch.tensor([2.0, -1.0]), 0))
    assert torch.allclose(restricted_softmax(torch.tensor([[1e4, -1e4, -1e4]]), sets[1:]),
                          torch.tensor([[0.0, 0.5, 0.5]]))  # all candidates underflow: uniform


def partial_digits(bias: str = "partial:0.3"):
    return prepare_data("digits", bias, seed=0)


def train_proden(data, out: Path | None = None, epochs: int = 2, resume: bool = False):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    method = Proden()
    trainer = Trainer(model, data, replace(FAST, epochs=epochs), device="cpu", progress=False,
                      out_dir=out)
    trainer.fit(method, resume=resume)
    return trainer, method


def test_proden_keeps_q_a_distribution_on_the_set_and_learns_the_labels() -> None:
    data = partial_digits().train
    trainer, method = train_proden(data, epochs=3)
    assert method.q is not None and data.candidates is not None
    assert torch.allclose(method.q.sum(1), torch.ones(len(data.y)), atol=1e-5)
    assert (method.q[~data.candidates] == 0).all()
    history = trainer.history
    assert history[-1]["label_acc"] > 0.8 > float((data.y == data.clean_y).float().mean())
    assert history[-1]["q_confidence"] > history[0]["q_confidence"]


def test_proden_never_reads_the_labels_as_given() -> None:
    data = partial_digits().train
    redrawn = replace(data, y=data.y.flip(0), clean_y=None)  # other labels, truth unknown
    (a, qa), (b, qb) = (train_proden(d) for d in (data, redrawn))
    assert torch.equal(qa.q, qb.q)
    for pa, pb in zip(a.module.parameters(), b.module.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_proden_resumes_bit_identically(tmp_path: Path) -> None:
    data = partial_digits().train
    straight, straight_method = train_proden(data, tmp_path / "a", epochs=2)
    train_proden(data, tmp_path / "b", epochs=1)
    resumed, resumed_method = train_proden(data, tmp_path / "b", epochs=2, resume=True)
    assert torch.equal(straight_method.q, resumed_method.q)
    for pa, pb in zip(straight.module.parameters(), resumed.module.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_proden_needs_candidate_sets() -> None:
    with pytest.raises(ValueError, match="needs partial-label data"):
        train_proden(prepare_data("digits", "symmetric:0.2", seed=0).train)


def test_stage_two_uses_only_the_predicted_labels() -> None:
    """Stage 2 (CMW-Net, meta set rebuilt from the training data) trains identically whatever the
    hidden true labels are: it would differ if it read them."""
    prepared = partial_digits()
    _, proden = train_proden(prepared.train)
    predicted = proden.predicted_labels()
    scrambled = replace(prepared, train=replace(prepared.train, clean_y=prepared.train.clean_y.roll(1)))
    weighters = []
    for data in (relabelled(prepared, predicted), relabelled(scrambled, predicted)):
        assert torch.equal(data.train.y, predicted) and data.train.candidates is None
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        method = MetaWeighting(MetaWeightingConfig(hidden=8, meta=MetaConfig(source="train", per_class=3)))
        Trainer(model, data.train, FAST, device="cpu", progress=False).fit(method)
        weighters.append(method.weighter.state_dict())
    for key, value in weighters[0].items():
        assert torch.equal(value, weighters[1][key])


def test_partial_recipe_runs_both_stages(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, [
        "train", "mnist5k-partial30-cmwnet", "--out", str(tmp_path / "run"), "--epochs", "2",
        "--set", "data.dataset=digits", "--set", "schedule.milestones=[]", "--baseline", "ce",
        "--baseline", "proden", "--no-progress", "--threads", "1",
    ])
    assert result.exit_code == 0, result.output
    assert "proden+cmwnet" in result.output and "proden+ce" in result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0.5 < metrics["proden"]["label_acc"] <= 1.0
    assert len(metrics["proden"]["history"]) == 2
    assert (tmp_path / "run" / "proden" / "checkpoint.pt").exists()
    weighter = load_artifact(tmp_path / "run" / "weighter")
    source = Provenance.from_metadata(weighter.config.metadata).source
    assert source["regime"]["name"] == "partial" and "proden" in source["bias_report"]
    assert "partial-labels" in card_tags(weighter)


def test_partial_regime_refuses_a_clean_meta_set() -> None:
    with pytest.raises(ValueError, match="no clean labels to hold out"):
        load_recipe("mnist5k-partial30-cmwnet", ["meta.source=clean"])


def test_singleton_meta_set_holds_out_exactly_labelled_samples_without_reading_the_truth() -> None:

    data = prepare_data("digits", "partial-pair:0.5", seed=0)
    sets = data.train.candidates
    assert sets is not None
    predicted = torch.randint(0, 10, (len(data.train.y),), generator=torch.Generator().manual_seed(1))
    stage2 = relabelled(data, predicted)
    # hide the truth: the meta labels must come from the candidate sets alone
    hidden = replace(stage2, train=replace(stage2.train, clean_y=None))
    held = singleton_meta_set(hidden, sets, per_class=4, seed=0)
    assert held.meta_x is not None and held.meta_y is not None
    counts = torch.bincount(held.meta_y, minlength=10)
    available = held.bias.report["meta_singletons"]["available_per_class"]
    assert counts.tolist() == [min(4, a) for a in available] == held.bias.report["meta_singletons"][
        "held_out_per_class"]
    single = torch.nonzero(sets.sum(1) == 1).squeeze(1)
    assert sum(available) == len(single) > 0
    # every meta sample is an exactly labelled training sample, with its true label, and left training
    rows = {tuple(r.flatten().tolist()): i for i, r in enumerate(data.train.x)}
    index = torch.tensor([rows[tuple(r.flatten().tolist())] for r in held.meta_x])
    assert bool((sets[index].sum(1) == 1).all())
    assert torch.equal(held.meta_y, data.train.clean_y[index])
    assert len(held.train.y) == len(stage2.train.y) - len(index)
    assert len(held.bias.labels) == len(held.train.y) == len(held.bias.is_noisy)
    none = torch.zeros_like(sets)
    none[:, 0] = True
    none[:, 1] = True
    with pytest.raises(ValueError, match="no candidate set has a single label"):
        singleton_meta_set(stage2, none, per_class=4, seed=0)


def test_partial_recipe_with_a_singleton_meta_set(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs regime.name = 'partial'"):
        load_recipe("digits-sym40-mwnet", ["meta.source=\"singletons\""])
    recipe = load_recipe("mnist5k-partial30-cmwnet", [
        "data.dataset=\"digits\"", "data.bias=\"partial-pair:0.5\"", "meta.source=\"singletons\"",
        "meta.per_class=5", "meta.mixup_alpha=0.0", "schedule.epochs=2", "schedule.milestones=[]"])
    train_recipe(recipe, tmp_path / "run", device="cpu", progress=False)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    held = run["data"]["bias"]["meta_singletons"]["held_out_per_class"]
    assert run["data"]["n_meta"] == sum(held) > 0 and max(held) <= 5


def test_apply_partial_regime_compares_with_proden(tmp_path: Path) -> None:
    args = ["apply", "cmwnet-fmnist-asym40", "--data", "digits", "--bias", "partial:0.3",
            "--regime", "partial", "--baseline", "proden", "--baseline", "ce", "--epochs", "2",
            "--out", str(tmp_path / "cmp"), "--no-progress", "--threads", "1", "--json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    comparison = json.loads(result.output)
    assert set(comparison["runs"]) == {"proden", "weighter", "ce"}
    assert comparison["gain_over_proden"] == pytest.approx(
        comparison["runs"]["weighter"]["test_acc"] - comparison["runs"]["proden"]["test_acc"])
    assert comparison["data"]["bias"]["proden"]["label_acc"] > 0.5
    refused = CliRunner().invoke(cli, [*args[:5], "symmetric:0.3", *args[6:-6], "--out",
                                       str(tmp_path / "x"), "--no-progress"])
    assert refused.exit_code != 0 and "needs partial-label data" in refused.output
    assert not (tmp_path / "x").exists()


def write_npz(path: Path, **arrays: np.ndarray) -> str:
    np.savez(path, **arrays)
    return f"npz:{path}"


def test_npz_candidate_sets_beside_or_instead_of_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(200, 5)), np.arange(200) % 4
    sets = candidate_sets(y, 4, "partial", 0.3, rng).astype(np.int8)
    beside = prepare_data(write_npz(tmp_path / "a.npz", X=x, y=y, S=sets), "none", seed=0)
    assert beside.train.candidates is not None and beside.train.clean_y is not None
    assert beside.train.candidates[torch.arange(len(beside.train.y)), beside.train.clean_y].all()
    only = prepare_data(write_npz(tmp_path / "b.npz", X=x, S=sets, X_test=x[:20], y_test=y[:20]),
                        "none", seed=0)
    assert only.train.clean_y is None and only.bias.report["labels_known"] is False
    with pytest.raises(ValueError, match="miss their true label"):
        load_dataset(write_npz(tmp_path / "c.npz", X=x, y=(y + 1) % 4, S=sets * np.eye(4, dtype=np.int8)[y]))
    with pytest.raises(ValueError, match="need a labelled test split"):
        load_dataset(write_npz(tmp_path / "d.npz", X=x, S=sets))
    with pytest.raises(ValueError, match="takes no bias"):
        prepare_data(write_npz(tmp_path / "e.npz", X=x, y=y, S=sets), "symmetric:0.2", seed=0)
