"""Smoke test of benchmarks/step_cost.py: it runs and writes the documented schema (no timings checked)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "step_cost.py"


def test_step_cost_smoke(tmp_path: Path) -> None:
    out = tmp_path / "step_cost.json"
    subprocess.run(
        [sys.executable, str(SCRIPT), "--repeats", "1", "--warmup", "1", "--min-seconds", "0",
         "--models", "mlp", "--threads", "1", "--out", str(out)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    report = json.loads(out.read_text())
    assert report["schema"] == "weightzoo.step_cost/2"
    for key in ("platform", "cpu_model", "torch", "torch_threads", "device"):
        assert key in report["machine"]
    assert report["machine"]["device"] == "cpu" and report["machine"]["torch_threads"] == 1
    assert len(report["load_average_start"]) == 3 and len(report["load_average_end"]) == 3
    assert report["date_utc"].endswith("+00:00")
    rows = report["results"]
    assert [(r["section"], r["model"]) for r in rows] == [("meta", "mlp"), ("frozen", "mlp"),
                                                          ("methods", "mlp"), ("fixmatch", "mlp")]
    own = {"ce", "meta_exact", "meta_jvp", "meta_last-layer", "meta_famus",
           "meta_exact_lagged", "meta_jvp_lagged", "meta_famus_lagged"}
    assert own <= set(rows[0]["variants"]) <= own | {"peer_higher", "peer_torchopt"}  # peers: optional
    assert set(rows[1]["variants"]) == {"ce", "frozen"}
    assert set(rows[2]["variants"]) == {"ce", "method_mwnet_interval5", "method_mwnet_famus_interval5",
                                        "method_mwnet_lagged", "method_mwnet_auto_lagged_interval5",
                                        "method_mwnet_famus_lagged_interval5", *(
        f"method_{m}" for m in ("ce", "mwnet", "cmwnet", "cmwnet-sl", "l2rw", "arl"))}
    assert set(rows[3]["variants"]) == {"ce", "fixmatch_threshold", "fixmatch_frozen", "fixmatch_meta"}
    assert rows[3]["frozen_over_threshold"] > 0
    for row in rows:
        assert row["iterations"] == 1
        for variant in row["variants"].values():
            assert set(variant["ms"]) == {"median", "q1", "q3", "iqr", "min", "n"}
            assert variant["ms"]["n"] == 1 and variant["ms"]["median"] > 0 and variant["ratio_to_ce"] > 0
            assert variant["peak_memory_mib"] is None  # CPU
            assert set(variant["paired_ratio_to_ce"]) == set(variant["ms"])


def test_step_cost_rejects_unknown_model(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--models", "nope", "--out", str(tmp_path / "x.json")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0 and "unknown" in result.stderr
    assert not (tmp_path / "x.json").exists()


def test_transfer_record_in_zoo_merges_cells_and_keeps_the_entry(tmp_path: Path, monkeypatch) -> None:
    """``transfer_matrix --record-in-zoo``: each entry's cells go into its artifact's transfer
    record (merged with cells recorded before), the card shows them, weights and metrics stay."""
    import shutil

    import torch

    from benchmarks import transfer_matrix
    from weightzoo.artifact import hub
    from weightzoo.artifact.card import cell_seeds
    from weightzoo.artifact.format import load_artifact

    name = "mwnet-fmnist-sym40"
    shutil.copytree(hub.builtin_root() / name, tmp_path / name)
    monkeypatch.setattr(hub, "builtin_root", lambda: tmp_path)
    before = load_artifact(tmp_path / name)
    metrics = (tmp_path / name / "metrics.json").read_bytes()

    def result(cell: str, acc: float, seeds: int = 1) -> dict:
        stat = {"mean": acc, "std": 0.0}
        rows = {"ce": {"mean": 0.80}, "gce": {"mean": 0.90}, name: stat}
        return {"weighters": [name], "seeds": list(range(seeds)), "machine": {"date_utc": "2026-11-26 10:00"},
                "summary": {cell: {"rows": rows, "best_robust_baseline": "gce", "devices": ["cpu"]}}}

    old = before.config.metadata.get("transfer", {})
    transfer_matrix.record_in_zoo(result("new-target sym40", 0.85))
    transfer_matrix.record_in_zoo(result("other-target lt50", 0.70, seeds=10))
    after = load_artifact(tmp_path / name)
    cells = after.config.metadata["transfer"]["cells"]
    assert cells["new-target sym40"]["acc"] == 0.85 and cells["other-target lt50"]["ce"] == 0.80
    assert set(old.get("cells", {})) <= set(cells)
    # each cell keeps the number of seeds it was measured with (earlier cells: the old record's)
    assert cells["new-target sym40"]["seeds"] == 1 and cells["other-target lt50"]["seeds"] == 10
    assert all(cells[c]["seeds"] == cell_seeds(old, row) for c, row in old.get("cells", {}).items())
    card = (tmp_path / name / "README.md").read_text()
    assert "| new-target sym40 | 1 | 85.00 | 80.00 | gce 90.00 | +5.00 | -5.00 |" in card
    assert "| other-target lt50 | 10 | 70.00 |" in card
    assert (tmp_path / name / "metrics.json").read_bytes() == metrics
    for key, value in before.state_dict().items():
        assert torch.equal(value, after.state_dict()[key])
    # applied with deferred re-balancing: its own cell, next to the re-balanced baselines
    # the same entry applied as is and with deferred re-balancing: two cells, only the latter
    # next to the re-balanced baselines
    drw = result("new-target lt50", 0.70)
    drw["weighters"] = [name, name + "+drw"]
    row = drw["summary"]["new-target lt50"]
    row["rows"] = {**row["rows"], name + "+drw": {"mean": 0.75}, "drw-sce": {"mean": 0.72}}
    row["best_drw_baseline"] = "drw-sce"
    transfer_matrix.record_in_zoo(drw)
    cells = load_artifact(tmp_path / name).config.metadata["transfer"]["cells"]
    assert cells["new-target lt50 deferred"]["best_drw"] == "drw-sce"
    assert cells["new-target lt50"]["acc"] == 0.70 and "best_drw" not in cells["new-target lt50"]
    card = (tmp_path / name / "README.md").read_text()
    assert ("| new-target lt50 deferred | 1 | 75.00 | 80.00 | gce 90.00 | -5.00 | -15.00 | drw-sce 72.00 |"
            in card)
    assert "| new-target sym40 | 1 | 85.00 | 80.00 | gce 90.00 | +5.00 | -5.00 | |" in card


def test_transfer_matrix_takes_shipped_names_and_weighter_directories(tmp_path: Path) -> None:
    import argparse

    import pytest

    from benchmarks.transfer_matrix import WEIGHTERS, parse_args, weighter_name
    from weightzoo import CMWNet

    assert weighter_name("mwnet-fmnist-sym40") == ("mwnet-fmnist-sym40", "mwnet-fmnist-sym40")
    assert weighter_name("mwnet-fmnist-sym40+drw") == ("mwnet-fmnist-sym40+drw", "mwnet-fmnist-sym40")
    for balanced in ("cmwnet-cb-fmnist-longtail+drw", "cmwnet-sl-fmnist-multi+drw"):
        with pytest.raises(argparse.ArgumentTypeError, match="takes no deferred re-balancing"):
            weighter_name(balanced)
    CMWNet(num_families=3).save_pretrained(tmp_path / "my-weighter")
    assert weighter_name(str(tmp_path / "my-weighter")) == ("my-weighter", str(tmp_path / "my-weighter"))
    for bad in ("no-such-entry", str(tmp_path)):
        with pytest.raises(argparse.ArgumentTypeError, match="neither a shipped entry"):
            weighter_name(bad)
    for taken in ("mwnet-fmnist-sym40", "gce"):  # a shipped entry's or a baseline's name
        CMWNet(num_families=3).save_pretrained(tmp_path / taken)
        with pytest.raises(argparse.ArgumentTypeError, match="rename it"):
            weighter_name(str(tmp_path / taken))
    assert [n for n, _ in parse_args([]).weighters] == WEIGHTERS  # the default: every shipped entry
    (tmp_path / "other").mkdir()
    CMWNet(num_families=3).save_pretrained(tmp_path / "other" / "my-weighter")
    assert parse_args(["--weighters", "mwnet-fmnist-sym40", "mwnet-fmnist-sym40+drw"]).weighters[1] == (
        "mwnet-fmnist-sym40+drw", "mwnet-fmnist-sym40")
    with pytest.raises(SystemExit):  # two directories with one name
        parse_args(["--weighters", str(tmp_path / "my-weighter"), str(tmp_path / "other" / "my-weighter")])


def test_transfer_matrix_refuses_a_reused_run_applied_otherwise(tmp_path: Path) -> None:
    """A cached run whose schedule contradicts its name (+drw or not) is refused, not reported."""
    import pytest

    from benchmarks.transfer_matrix import check_reused_runs

    plain, deferred = {"schedule": {"rebalance": "none"}}, {"schedule": {"rebalance": "deferred"}}
    old = {"schedule": {}}  # written before the key existed: as "none"
    check_reused_runs({"x": [plain, old], "x+drw": [deferred, deferred]}, [tmp_path / "a", tmp_path / "b"])
    with pytest.raises(SystemExit, match="b/x\\+drw: ran with rebalance = 'none'"):
        check_reused_runs({"x+drw": [deferred, plain]}, [tmp_path / "a", tmp_path / "b"])
    with pytest.raises(SystemExit, match="a/x: ran with rebalance = 'deferred'"):
        check_reused_runs({"x": [deferred]}, [tmp_path / "a"])


def _cell(pick: str, pick_values: list[float], best: dict[str, list[float]], ce: list[float]) -> dict:
    rows = {name: {"mean": sum(v) / len(v), "n": len(v), "values": v}
            for name, v in {pick: pick_values, "ce": ce, **best}.items()}
    return {"rows": rows}


def test_rule_verdict_pairs_seeds_against_each_cells_best_robust_loss() -> None:
    from benchmarks.rule_verdict import merged_cells, paired, verdict

    d = paired([0.90, 0.92, 0.94], [0.91, 0.91, 0.95])  # differences -1, +1, -1 points
    assert abs(d["mean"] + 1 / 3) < 1e-9 and d["n"] == 3
    assert abs(d["se"] - (4 / 3) ** 0.5 / 3 ** 0.5) < 1e-9
    with pytest.raises(ValueError, match="paired"):
        paired([0.9, 0.9], [0.9, 0.9, 0.9])

    # symmetric: a small, consistent deficit -> level at margin 0.5, behind at margin 0
    sym = {f"{t} sym40": _cell("arl-gce-fmnist-multi", [0.900, 0.910, 0.920],
                               {"gce": [0.902, 0.912, 0.921], "sce": [0.8, 0.8, 0.8],
                                "class-balanced": [0.7, 0.7, 0.7]}, [0.8, 0.8, 0.8])
           for t in ("a", "b")}
    # long tail (+drw pick): far behind the best robust loss in one cell, ahead of CE
    lt = {"a lt50": _cell("cmwnet-fmnist-longtail+drw", [0.80, 0.81, 0.82],
                          {"gce": [0.5, 0.5, 0.5], "sce": [0.6, 0.6, 0.6],
                           "class-balanced": [0.85, 0.86, 0.87]}, [0.79, 0.80, 0.81])}
    result = verdict({**sym, **lt}, margin=0.5)
    s = result["types"]["symmetric"]
    assert s["status"] == "level" and s["matched"] and s["cells"]["a sym40"]["best_robust"] == "gce"
    assert abs(s["gain"] + 1 / 6) < 1e-6 and s["ci95"][0] < 0 < s["ci95"][0] + 0.5
    assert verdict({**sym, **lt}, margin=0.0)["types"]["symmetric"]["status"] == "behind"
    lt_type = result["types"]["longtail"]
    assert lt_type["status"] == "behind" and lt_type["beats_ce_in"] == 1 and abs(lt_type["gain"] + 5) < 1e-6
    assert result["types_matched"] == 1 and result["cells_beating_ce"] == 3 and result["cells"] == 3

    # merging: rows of files run on the same seeds join; a file with more seeds gives the
    # cell; the same number of other seeds cannot pair
    three = {"seeds": [0, 1, 2], "summary": {"a sym40": _cell("x", [0.1, 0.2, 0.3], {}, [0.1] * 3)}}
    same = {"seeds": [0, 1, 2], "summary": {"a sym40": _cell("y", [0.4, 0.5, 0.6], {}, [0.1] * 3)}}
    ten = {"seeds": list(range(10)), "summary": {"a sym40": _cell("z", [0.5] * 10, {}, [0.2] * 10)}}
    other = {"seeds": [3, 4, 5], "summary": {"a sym40": _cell("w", [0.4, 0.5, 0.6], {}, [0.1] * 3)}}
    assert set(merged_cells([three, same])["a sym40"]["rows"]) == {"x", "y", "ce"}
    assert set(merged_cells([three, ten, same])["a sym40"]["rows"]) == {"z", "ce"}
    with pytest.raises(ValueError, match="do not pair"):
        merged_cells([three, other])


def test_gce_q_sweeps_q_per_target_and_writes_its_table(tmp_path: Path, monkeypatch) -> None:
    from benchmarks import gce_q

    trained = []

    def fake_cell(runs: Path, target: str, q: float, seed: int) -> float:
        trained.append((target, q, seed))
        return q / 2 + seed / 100

    monkeypatch.setattr(gce_q, "run_cell", fake_cell)
    argv = ["gce_q", "--targets", "digits-mlp", "--q", "0.5", "0.7", "--seeds", "0", "2",
            "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "r")]
    monkeypatch.setattr(sys, "argv", argv)
    gce_q.main()
    result = json.loads((tmp_path / "r.json").read_text())
    assert trained == [("digits-mlp", q, s) for q in (0.5, 0.7) for s in (0, 2)]
    assert abs(result["cells"]["digits-mlp"]["0.7"]["mean"] - 0.36) < 1e-9
    assert result["bias"] == "symmetric:0.4"
    assert "| digits-mlp | 26.00 ± 1.41 | 36.00 ± 1.41 |" in (tmp_path / "r.md").read_text()
