"""Transfer benchmark (issue: apply): weighters meta-trained on Fashion-MNIST (the shipped zoo)
applied frozen to MNIST-5k under symmetric noise, asymmetric noise and long-tail, against CE
and the robust-loss baselines with the same model, schedule and seed.

    python -m benchmarks.transfer [--seeds 0 1 2] [--parallel 2] [--runs runs/bench-transfer]

Writes benchmarks/results/transfer_mnist5k.json and .md (mean ± std over seeds).
"""

from __future__ import annotations

import argparse
import sys

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

# target bias -> the zoo weighter trained on the matching bias (the general-purpose
# mixed-noise CMW-Net is applied to every target as well)
TARGETS = {
    "symmetric:0.4": "mwnet-fmnist-sym40",
    "asymmetric:0.4": "cmwnet-fmnist-asym40",
    "longtail:50": "mwnet-fmnist-longtail",
}
GENERAL = "cmwnet-fmnist-mixed"
# other artifact kinds applied frozen to a target: the SL weighter (with its SL loss) and the
# learned robust loss
EXTRA = {"symmetric:0.4": ["cmwnet-sl-fmnist-sym40", "arl-gce-fmnist-sym40"]}
BASELINES = ["ce", "focal", "gce", "sce", "class-balanced"]
APPLY = ["--data", "mnist5k", "--model", "mlp", "--epochs", "15", "--warmup-epochs", "2"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_run_options(parser, "runs/bench-transfer", "benchmarks/results/transfer_mnist5k")
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    args = parser.parse_args()
    targets = {bias: TARGETS[bias] for bias in args.targets}
    jobs = []
    for bias, weighter in targets.items():
        tag = bias.replace(":", "")
        for seed in args.seeds:
            for name in dict.fromkeys([weighter, GENERAL, *EXTRA.get(bias, [])]):
                out = args.runs / tag / f"seed{seed}" / name
                extra = [x for b in BASELINES for x in ("--baseline", b)] if name == weighter else []
                jobs.append((["apply", name, *APPLY, "--bias", bias, "--seed", str(seed),
                              "--out", str(out), *extra], out / "comparison.json"))
    run_jobs(jobs, args.parallel, args.runs / "jobs.log")
    summary: dict[str, dict] = {}
    for bias, weighter in targets.items():
        tag = bias.replace(":", "")
        rows: dict[str, dict] = {}
        comps = {s: read_json(args.runs / tag / f"seed{s}" / weighter / "comparison.json")
                 for s in args.seeds}
        general = {s: read_json(args.runs / tag / f"seed{s}" / GENERAL / "comparison.json")
                   for s in args.seeds}
        for method in ["weighter", *BASELINES]:
            key = f"{weighter} (frozen)" if method == "weighter" else method
            rows[key] = {m: mean_std([comps[s]["runs"][method][m] for s in args.seeds])
                         for m in ("test_acc", "head_acc", "medium_acc", "tail_acc")}
        for other in [GENERAL, *EXTRA.get(bias, [])]:
            if other == weighter:
                continue
            comp = general if other == GENERAL else {
                s: read_json(args.runs / tag / f"seed{s}" / other / "comparison.json") for s in args.seeds}
            rows[f"{other} (frozen)"] = {
                m: mean_std([comp[s]["runs"]["weighter"][m] for s in args.seeds])
                for m in ("test_acc", "head_acc", "medium_acc", "tail_acc")}
        best = max(BASELINES[1:], key=lambda b: rows[b]["test_acc"]["mean"])
        summary[bias] = {"rows": rows, "best_robust_baseline": best,
                         "gain_over_ce": rows[f"{weighter} (frozen)"]["test_acc"]["mean"]
                         - rows["ce"]["test_acc"]["mean"],
                         "gain_over_best_baseline": rows[f"{weighter} (frozen)"]["test_acc"]["mean"]
                         - rows[best]["test_acc"]["mean"]}
    result = {"machine": machine(), "seeds": args.seeds, "apply_args": APPLY,
              "command": "python -m benchmarks.transfer " + " ".join(sys.argv[1:]), "summary": summary}
    write_results(args.results, result, markdown)


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"{machine_line(m)}; "
             f"seeds {result['seeds']}; target MNIST-5k, MLP, `weightzoo apply "
             f"{' '.join(result['apply_args'])}`; clean test accuracy (%) at the last epoch.", ""]
    for bias, entry in result["summary"].items():
        lines += [f"**MNIST-5k, {bias}** (best robust baseline: {entry['best_robust_baseline']}; "
                  f"gain of the matching weighter over CE {100 * entry['gain_over_ce']:+.2f}, over the "
                  f"best baseline {100 * entry['gain_over_best_baseline']:+.2f} points)", "",
                  "| method | test acc | head | medium | tail |", "|---|---|---|---|---|"]
        for name, row in entry["rows"].items():
            lines.append(f"| {name} | {accuracy_cells(row)} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
