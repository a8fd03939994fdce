"""Smoke test of benchmarks/step_cost.py: it runs and writes the documented schema (no timings checked)."""

import json
import subprocess
import sys
from pathlib import Path

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
    own = {"ce", "meta_exact", "meta_jvp", "meta_last-layer", "meta_famus"}
    assert own <= set(rows[0]["variants"]) <= own | {"peer_higher", "peer_torchopt"}  # peers: optional
    assert set(rows[1]["variants"]) == {"ce", "frozen"}
    assert set(rows[2]["variants"]) == {"ce", "method_mwnet_interval5", "method_mwnet_famus_interval5", *(
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
