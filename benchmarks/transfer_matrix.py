"""Transfer matrix (issue: transfer a user can trust): every shipped supervised weighter (and
the learned loss) applied frozen with ``weightzoo apply`` to offline targets it was not
trained on (the zoo is meta-trained on Fashion-MNIST), under four bias types, next to CE,
GCE, SCE and class-balanced CE on identical data, model, schedule and seed.

    python -m benchmarks.transfer_matrix [--targets digits-mlp mnist5k-mlp] [--seeds 0 1 2]

The weighter a user would pick without test labels is chosen by the bias they declare
(``RULE``: the zoo entry meta-trained on that bias type). Writes
benchmarks/results/transfer_matrix.json / .md (per cell: every weighter and baseline, mean ±
std; the rule's pick against CE and the best robust baseline) and transfer_matrix.png (a
heat map of each weighter's gain over CE, and of the rule's pick over the best baseline).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

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

WEIGHTERS = ["mwnet-fmnist-sym40", "cmwnet-fmnist-asym40", "mwnet-fmnist-longtail",
             "cmwnet-fmnist-longtail-noise", "cmwnet-fmnist-mixed", "cmwnet-sl-fmnist-sym40",
             "arl-gce-fmnist-sym40"]
BIASES = {"sym40": "symmetric:0.4", "asym40": "asymmetric:0.4", "lt50": "longtail:50",
          "lt50+sym40": "longtail:50+symmetric:0.4"}
# the declared bias -> the weighter a user picks (the zoo entry meta-trained on that bias)
RULE = {"sym40": "mwnet-fmnist-sym40", "asym40": "cmwnet-fmnist-asym40", "lt50": "mwnet-fmnist-longtail",
        "lt50+sym40": "cmwnet-fmnist-longtail-noise"}
BASELINES = ["ce", "gce", "sce", "class-balanced"]
ROBUST = BASELINES[1:]
TARGETS = {  # name -> (dataset, model, epochs)
    "digits-mlp": ("digits", "mlp", 30),
    "mnist5k-mlp": ("mnist5k", "mlp", 15),
    "digits-cnn": ("digits", "cnn", 15),
}


def cell_dir(runs: Path, target: str, bias: str, seed: int) -> Path:
    return runs / target / bias.replace("+", "_") / f"seed{seed}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_run_options(parser, "runs/bench-transfer-matrix", "benchmarks/results/transfer_matrix")
    parser.add_argument("--targets", nargs="+", default=["digits-mlp", "mnist5k-mlp"], choices=list(TARGETS))
    parser.add_argument("--biases", nargs="+", default=list(BIASES), choices=list(BIASES))
    args = parser.parse_args()
    jobs = []
    for target in args.targets:
        dataset, model, epochs = TARGETS[target]
        for bias in args.biases:
            for seed in args.seeds:
                cell = cell_dir(args.runs, target, bias, seed)
                for i, weighter in enumerate(WEIGHTERS):  # the first also trains the baselines
                    extra = [x for b in BASELINES for x in ("--baseline", b)] if i == 0 else []
                    jobs.append((["apply", weighter, "--data", dataset, "--model", model, "--epochs",
                                  str(epochs), "--bias", BIASES[bias], "--seed", str(seed),
                                  "--out", str(cell / weighter), *extra],
                                 cell / weighter / "comparison.json"))
    run_jobs(jobs, args.parallel, args.runs / "jobs.log")
    summary: dict[str, dict] = {}
    for target in args.targets:
        for bias in args.biases:
            cells = [cell_dir(args.runs, target, bias, s) for s in args.seeds]
            first = [read_json(c / WEIGHTERS[0] / "comparison.json") for c in cells]
            rows = {b: mean_std([f["runs"][b]["test_acc"] for f in first]) for b in BASELINES}
            for weighter in WEIGHTERS:
                rows[weighter] = mean_std([read_json(c / weighter / "comparison.json")["runs"]["weighter"]
                                           ["test_acc"] for c in cells])
            best = max(ROBUST, key=lambda b: rows[b]["mean"])
            pick = RULE[bias]
            summary[f"{target} {bias}"] = {
                "rows": rows, "rule_pick": pick, "best_robust_baseline": best,
                "pick_minus_ce": rows[pick]["mean"] - rows["ce"]["mean"],
                "pick_minus_best_robust": rows[pick]["mean"] - rows[best]["mean"],
                "best_weighter": max(WEIGHTERS, key=lambda w: rows[w]["mean"]),
            }
    result = {"machine": machine(), "seeds": args.seeds, "targets": {t: TARGETS[t] for t in args.targets},
              "biases": {b: BIASES[b] for b in args.biases}, "rule": RULE, "weighters": WEIGHTERS,
              "baselines": BASELINES,
              "command": "python -m benchmarks.transfer_matrix " + " ".join(sys.argv[1:]), "summary": summary}
    write_results(args.results, result, markdown)
    heat_map(result, args.results.with_suffix(".png"))


def markdown(result: dict) -> str:
    lines = [f"{machine_line(result['machine'])}; seeds {result['seeds']}; clean test accuracy (%) at "
             "the last epoch, mean ± std; `weightzoo apply` defaults (2 plain-CE warm-up epochs, lr 0.1).",
             "", "| cell | rule pick | pick | CE | best robust | pick − CE | pick − best robust | "
             "best weighter |", "|---|---|---|---|---|---|---|---|"]
    for cell, row in result["summary"].items():
        rows, pick, best = row["rows"], row["rule_pick"], row["best_robust_baseline"]
        top = row["best_weighter"]
        lines.append(f"| {cell} | {pick} | {pm(rows[pick])} | {pm(rows['ce'])} | {best} {pm(rows[best])} | "
                     f"{100 * row['pick_minus_ce']:+.2f} | {100 * row['pick_minus_best_robust']:+.2f} | "
                     f"{top} {pm(rows[top])} |")
    lines += ["", "Every weighter and baseline per cell (test accuracy %, mean ± std):", "",
              "| cell | " + " | ".join(result["baselines"] + result["weighters"]) + " |",
              "|---|" + "---|" * (len(result["baselines"]) + len(result["weighters"]))]
    for cell, row in result["summary"].items():
        names = result["baselines"] + result["weighters"]
        lines.append(f"| {cell} | " + " | ".join(pm(row["rows"][n]) for n in names) + " |")
    return "\n".join(lines)


def heat_map(result: dict, path: Path) -> None:
    """Left: every weighter's gain over CE per cell; right: the rule's pick minus CE and minus
    the best robust baseline (points)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = result["summary"]
    cells, weighters = list(summary), result["weighters"]
    gains = np.array([[100 * (summary[c]["rows"][w]["mean"] - summary[c]["rows"]["ce"]["mean"])
                       for c in cells] for w in weighters])
    pick = np.array([[100 * summary[c]["pick_minus_ce"] for c in cells],
                     [100 * summary[c]["pick_minus_best_robust"] for c in cells]])
    fig, axes = plt.subplots(2, 1, figsize=(3 + 1.0 * len(cells), 2.5 + 0.45 * len(weighters)),
                             gridspec_kw={"height_ratios": [len(weighters), 2]})
    for ax, values, rows, title in ((axes[0], gains, weighters, "frozen weighter − CE (points)"),
                                    (axes[1], pick, ["rule pick − CE", "rule pick − best robust"],
                                     "the weighter picked by the declared bias (points)")):
        limit = max(float(np.abs(values).max()), 1.0)
        ax.imshow(values, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
        ax.set_xticks(range(len(cells)), cells, rotation=30, ha="right", fontsize=7)
        ax.set_yticks(range(len(rows)), rows, fontsize=7)
        ax.set_title(title, fontsize=9)
        for (i, j), value in np.ndenumerate(values):
            ax.text(j, i, f"{value:+.1f}", ha="center", va="center", fontsize=7,
                    color="white" if abs(value) > 0.6 * limit else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
