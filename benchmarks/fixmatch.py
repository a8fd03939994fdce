"""Semi-supervised benchmark (CMW-Net §7.2, Table XI in a CPU-sized setting): FixMatch (its
threshold mask) vs FixMatch + a CMW-Net meta-trained as the mask (labelled batch as meta
data) vs FixMatch + a frozen zoo weighter meta-trained on another dataset (Fashion-MNIST),
on MNIST-5k with two label budgets, identical data per (budget, seed).

    python -m benchmarks.fixmatch [--budgets 4 25] [--seeds 0 1 2] [--parallel 2]

Writes benchmarks/results/fixmatch_mnist5k.json and .md: test accuracy (%) at the last
epoch, mean ± std, with the pseudo-label accuracy and the mean mask weight of correct and
of wrong pseudo-labels at the last epoch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

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

RECIPE = "mnist5k-fixmatch{budget}-cmwnet"
ZOO = "cmwnet-fixmatch4-fmnist"
# apply's schedule and batch = the recipes'
APPLY_SCHEDULE = ["--epochs", "30", "--milestones", "20,25", "--warmup-epochs", "1", "--lr", "0.03",
                  "--batch-size", "32"]
COLUMNS = ("fixmatch", "fixmatch+meta", "fixmatch+frozen")


def jobs_for(budget: int, seed: int, runs: Path, zoo: str, model: str,
             device: str) -> list[tuple[list[str], Path]]:
    """The meta-trained mask (train), the frozen zoo mask beside FixMatch's threshold (apply)."""
    base = runs / f"labels{budget}" / f"seed{seed}"
    common = ["--seed", str(seed), "--device", device]
    return [
        (["train", RECIPE.format(budget=budget), "--out", str(base / "meta"), *common,
          "--set", f"model.name={model}"], base / "meta" / "metrics.json"),
        (["apply", zoo, "--data", "mnist5k", "--regime", "fixmatch", "--labeled-per-class", str(budget),
          "--baseline", "fixmatch", "--model", model, *common, *APPLY_SCHEDULE,
          "--out", str(base / "frozen")], base / "frozen" / "comparison.json"),
    ]


def last_epoch(history: list[dict]) -> dict[str, float]:
    last = history[-1]
    return {k: last[k] for k in ("pseudo_acc", "weight_correct", "weight_wrong")}


def collect(base: Path) -> dict[str, float]:
    meta = read_json(base / "meta" / "metrics.json")
    frozen = read_json(base / "frozen" / "comparison.json")
    threshold = read_json(base / "frozen" / "fixmatch" / "metrics.json")
    weighter = read_json(base / "frozen" / "weighter" / "metrics.json")
    row = {"fixmatch": frozen["runs"]["fixmatch"]["test_acc"], "fixmatch+meta": meta["final"]["test_acc"],
           "fixmatch+frozen": frozen["runs"]["weighter"]["test_acc"]}
    for name, history in (("fixmatch", threshold["history"]), ("fixmatch+meta", meta["history"]),
                          ("fixmatch+frozen", weighter["history"])):
        row.update({f"{name}:{k}": v for k, v in last_epoch(history).items()})
    return row


def gpu_name() -> str:
    import torch

    return f"cuda ({torch.cuda.get_device_name()}, torch {torch.__version__})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--budgets", nargs="+", type=int, default=[4, 25])
    parser.add_argument("--zoo", default=ZOO)
    parser.add_argument("--model", default="mlp", help="mlp (the recipes') or cnn")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    add_run_options(parser, "runs/bench-fixmatch", "benchmarks/results/fixmatch_mnist5k")
    args = parser.parse_args()
    jobs = [job for b in args.budgets for s in args.seeds
            for job in jobs_for(b, s, args.runs, args.zoo, args.model, args.device)]
    run_jobs(jobs, args.parallel, args.runs / "jobs.log")
    summary = {}
    for budget in args.budgets:
        rows = [collect(args.runs / f"labels{budget}" / f"seed{s}") for s in args.seeds]
        summary[str(budget)] = {key: mean_std([r[key] for r in rows]) for key in rows[0]}
        summary[str(budget)]["per_seed"] = rows
    result = {"machine": machine(), "seeds": args.seeds, "recipe": RECIPE, "zoo_weighter": args.zoo,
              "model": args.model, "device": args.device if args.device != "cuda" else gpu_name(),
              "command": "python -m benchmarks.fixmatch " + " ".join(sys.argv[1:]), "summary": summary}
    write_results(args.results, result, markdown)


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"{machine_line(m)}; "
             f"device {result['device']}; MNIST-5k, model {result['model']}, 30 epochs, B = 32, mu = 7, "
             f"seeds {result['seeds']}; test accuracy (%) "
             f"at the last epoch, mean ± std. Frozen weighter: {result['zoo_weighter']}.", "",
             "| labels per class | FixMatch | FixMatch + CMW-Net (meta) | FixMatch + frozen zoo |",
             "|---|---|---|---|"]
    for budget, row in result["summary"].items():
        lines.append(f"| {budget} | " + " | ".join(pm(row[c]) for c in COLUMNS) + " |")
    lines += ["", "Last epoch: pseudo-label accuracy and mean mask weight of correct / wrong pseudo-labels "
              "(%, mean ± std).", "", "| labels per class | method | pseudo-label acc | weight, correct | "
              "weight, wrong |", "|---|---|---|---|---|"]
    for budget, row in result["summary"].items():
        for c in COLUMNS:
            lines.append(f"| {budget} | {c} | " + " | ".join(
                pm(row[f"{c}:{k}"]) for k in ("pseudo_acc", "weight_correct", "weight_wrong")) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
