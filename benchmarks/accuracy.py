"""Accuracy benchmark (issue: meta-training): CE, the robust-loss baselines, MW-Net and CMW-Net
on the Fashion-MNIST recipes over several seeds, identical data per seed.

    python -m benchmarks.accuracy [--seeds 0 1 2] [--parallel 2] [--runs runs/bench-accuracy]

Writes benchmarks/results/accuracy_fmnist.json and .md: clean test accuracy (last epoch) as
mean ± std over seeds, head/medium/tail for long-tail, and the shape of the learned
weighting functions (decreasing under noise, increasing under imbalance, per-family
differences for CMW-Net).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from benchmarks.common import (
    accuracy_cells,
    add_run_options,
    machine,
    machine_line,
    mean_std,
    read_json,
    run_jobs,
    write_results,
)
from weightzoo.artifact.format import load_artifact

RECIPES = ["fmnist-sym40-mwnet", "fmnist-longtail-mwnet", "fmnist-asym40-cmwnet"]
METHODS = ["ce", "focal", "gce", "sce", "class-balanced", "mwnet", "cmwnet"]
# Settings a method needs beyond its defaults when a recipe is switched to it.
METHOD_OVERRIDES = {"cmwnet-sl": ["meta.mixup_alpha=1.0"],
                    "arl": ["meta.meta_lr=1e-2", "meta.meta_weight_decay=0"]}
# benchmark names for method variants: name -> (registered method, extra overrides)
VARIANTS = {f"arl-{loss}": ("arl", [f"method.loss={loss}"]) for loss in ("sce", "poly-soft", "bi-tempered")}
WEIGHTER_METHODS = ("mwnet", "cmwnet", "cmwnet-sl")


def curve_shape(weighter_dir: Path) -> dict[str, object]:
    """Weight per family at loss 0.1 ln C and 2 ln C, and the largest gap between families."""
    weighter = load_artifact(weighter_dir)
    c = weighter.config.source_num_classes
    grid = torch.linspace(0, 3 * torch.log(torch.tensor(float(c))), 31)
    curves = weighter.curve(grid)  # (31, K)
    low, high = curves[1], curves[20]  # 0.1 ln C, 2 ln C
    return {"weight_low_loss": low.tolist(), "weight_high_loss": high.tolist(),
            "trend": ["decreasing" if a > b else "increasing" for a, b in zip(low, high, strict=True)],
            "max_family_gap": float((curves.max(1).values - curves.min(1).values).max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipes", nargs="+", default=RECIPES)
    parser.add_argument("--methods", nargs="+", default=METHODS)
    add_run_options(parser, "runs/bench-accuracy", "benchmarks/results/accuracy_fmnist")
    args = parser.parse_args()
    jobs = []
    for recipe in args.recipes:
        for seed in args.seeds:
            for method in args.methods:
                out = args.runs / recipe / f"seed{seed}" / method
                registered, variant = VARIANTS.get(method, (method, []))
                items = [*METHOD_OVERRIDES.get(registered, []), *variant]
                extra = [arg for item in items for arg in ("--set", item)]
                jobs.append((["train", recipe, "--out", str(out), "--seed", str(seed),
                              "--set", f"method.name={registered}", *extra], out / "metrics.json"))
    run_jobs(jobs, args.parallel, args.runs / "jobs.log")
    summary: dict[str, dict] = {}
    for recipe in args.recipes:
        summary[recipe] = {}
        for method in args.methods:
            runs = [args.runs / recipe / f"seed{s}" / method for s in args.seeds]
            finals = [read_json(r / "metrics.json")["final"] for r in runs]
            row = {key: mean_std([f[key] for f in finals])
                   for key in ("test_acc", "best_test_acc", "head_acc", "medium_acc", "tail_acc")}
            if method in WEIGHTER_METHODS:
                row["curves"] = [curve_shape(r / "weighter") for r in runs]
            summary[recipe][method] = row
    result = {"machine": machine(), "seeds": args.seeds, "recipes": args.recipes,
              "command": "python -m benchmarks.accuracy " + " ".join(sys.argv[1:]),
              "summary": summary}
    write_results(args.results, result, markdown)


def markdown(result: dict) -> str:
    lines = [f"{machine_line(result['machine'])}; "
             f"seeds {result['seeds']}; clean test accuracy (%) at the last epoch, mean ± std.", ""]
    for recipe, methods in result["summary"].items():
        lines += [f"**{recipe}**", "", "| method | test acc | head | medium | tail | learned curve |",
                  "|---|---|---|---|---|---|"]
        for method, row in methods.items():
            shape = ""
            if "curves" in row:
                trends = [c["trend"] for c in row["curves"]]
                gaps = [c["max_family_gap"] for c in row["curves"]]
                shape = f"{trends[0]} (seed 0); max family gap {max(gaps):.3f}"
            lines.append(f"| {method} | {accuracy_cells(row)} | {shape} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
