"""Accuracy cost of the meta-step approximations (issue: a faster meta step): the exact meta
step vs FaMUS vs the look-ahead through the last layer only vs the exact step every 5
iterations (``meta_interval`` 5) vs the exact step and FaMUS with the lagged real step
(``real_step = "lagged"``), each meta-training the recipe's weighter, over seeds.

    python -m benchmarks.meta_steps [--seeds 0 1 2] [--parallel 2] [--runs runs/bench-meta-steps]

Settings: digits (MLP and the small CNN) and Fashion-MNIST (MLP) with 40% symmetric noise
(MW-Net) and 40% asymmetric noise (CMW-Net), the shipped recipes. Writes
benchmarks/results/meta_steps.json and .md: clean test accuracy at the last epoch (mean ± std),
its difference to the exact step, and the total training wall time (every job with one torch
thread, ``--parallel`` jobs at a time on the same machine, so times compare within a table).
"""

from __future__ import annotations

import argparse
import sys

from benchmarks.common import (
    add_run_options,
    machine,
    machine_line,
    mean_std,
    pm,
    read_json,
    run_jobs,
    write_results,
)

SETTINGS: dict[str, tuple[str, list[str]]] = {
    "digits-mlp-sym40": ("digits-sym40-mwnet", []),
    "digits-mlp-asym40": ("digits-asym40-cmwnet", []),
    "digits-cnn-sym40": ("digits-sym40-mwnet", ["model.name=cnn"]),
    "digits-cnn-asym40": ("digits-asym40-cmwnet", ["model.name=cnn"]),
    "fmnist-mlp-sym40": ("fmnist-sym40-mwnet", []),
    "fmnist-mlp-asym40": ("fmnist-asym40-cmwnet", []),
}
VARIANTS: dict[str, list[str]] = {
    "exact": ["method.estimator=exact"],
    "famus": ["method.estimator=famus"],
    "last-layer": ["method.estimator=last-layer"],
    "interval5": ["method.estimator=exact", "meta.meta_interval=5"],
    "lagged": ["method.estimator=exact", "method.real_step=lagged"],
    "famus-lagged": ["method.estimator=famus", "method.real_step=lagged"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    add_run_options(parser, "runs/bench-meta-steps", "benchmarks/results/meta_steps")
    args = parser.parse_args()
    jobs = []
    for setting in args.settings:
        recipe, extra = SETTINGS[setting]
        for seed in args.seeds:
            for variant in args.variants:
                out = args.runs / setting / f"seed{seed}" / variant
                sets = [arg for item in [*extra, *VARIANTS[variant]] for arg in ("--set", item)]
                jobs.append((["train", recipe, "--out", str(out), "--seed", str(seed), *sets],
                             out / "metrics.json"))
    run_jobs(jobs, args.parallel, args.runs / "jobs.log")
    summary: dict[str, dict] = {}
    for setting in args.settings:
        summary[setting] = {}
        for variant in args.variants:
            metrics = [read_json(args.runs / setting / f"seed{s}" / variant / "metrics.json")
                       for s in args.seeds]
            row = {"test_acc": mean_std([m["final"]["test_acc"] for m in metrics]),
                   "train_seconds": mean_std([sum(r["seconds"] for r in m["history"]) for m in metrics])}
            layers = [m["history"][-1]["famus_layers"] for m in metrics if "famus_layers" in m["history"][-1]]
            if layers:
                row["famus_layers_last_epoch"] = mean_std(layers)
            summary[setting][variant] = row
    result = {"machine": machine(), "seeds": args.seeds, "settings": {k: SETTINGS[k] for k in args.settings},
              "variants": {k: VARIANTS[k] for k in args.variants},
              "command": "python -m benchmarks.meta_steps " + " ".join(sys.argv[1:]), "summary": summary}
    write_results(args.results, result, markdown)


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"{machine_line(m)}; seeds "
             f"{result['seeds']}; clean test accuracy (%) at the last epoch, mean ± std; Δ: vs the exact "
             "step; time: total training wall time per run (s, one torch thread).", "",
             "| setting | variant | test acc | Δ exact | time (s) | time / exact | FaMUS layers |",
             "|---|---|---|---|---|---|---|"]
    for setting, variants in result["summary"].items():
        exact = variants.get("exact")
        for variant, row in variants.items():
            delta = ratio = ""
            if exact is not None:
                delta = f"{100 * (row['test_acc']['mean'] - exact['test_acc']['mean']):+.2f}"
                ratio = f"{row['train_seconds']['mean'] / exact['train_seconds']['mean']:.2f}"
            layers = row.get("famus_layers_last_epoch")
            selected = "" if layers is None else f"{layers['mean']:.2f}"
            lines.append(f"| {setting} | {variant} | {pm(row['test_acc'])} | {delta} | "
                         f"{row['train_seconds']['mean']:.0f} | {ratio} | {selected} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
