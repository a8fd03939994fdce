"""Families on nearly balanced targets (issue: transfer): the CMW-Net zoo weighters applied
frozen to targets whose class sizes differ by sampling and symmetric noise only, against CE,
3 seeds. Run it once with the code before the equal-sizes rule and once after (different
``--runs`` / ``--label``) to see what splitting such classes over the heads by k-means cost.

    python -m benchmarks.balanced_families --label equal-sizes-rule [--runs DIR]

Writes benchmarks/results/balanced_families_LABEL.json (per-seed test accuracy and the
families each run used).
"""

from __future__ import annotations

import argparse
import json
import sys

from benchmarks.common import add_run_options, machine, mean_std, read_json, run_jobs

WEIGHTERS = ["cmwnet-fmnist-asym40", "cmwnet-fmnist-mixed"]
TARGETS = [("digits", "symmetric:0.4"), ("mnist5k", "symmetric:0.4")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--label", required=True)
    add_run_options(parser, "runs/bench-balanced-families", "benchmarks/results")
    args = parser.parse_args()
    jobs = []
    for name in WEIGHTERS:
        for dataset, bias in TARGETS:
            for seed in args.seeds:
                out = args.runs / args.label / name / dataset / f"seed{seed}"
                jobs.append((["apply", name, "--data", dataset, "--bias", bias, "--seed", str(seed),
                              "--epochs", "15", "--baseline", "ce", "--out", str(out)],
                             out / "comparison.json"))
    run_jobs(jobs, args.parallel, args.runs / args.label / "jobs.log")
    summary: dict[str, dict] = {}
    for name in WEIGHTERS:
        for dataset, bias in TARGETS:
            runs = [read_json(args.runs / args.label / name / dataset / f"seed{s}" / "comparison.json")
                    for s in args.seeds]
            summary[f"{name} -> {dataset} {bias}"] = {
                "weighter": mean_std([r["runs"]["weighter"]["test_acc"] for r in runs]),
                "ce": mean_std([r["runs"]["ce"]["test_acc"] for r in runs]),
                "families": [r.get("families") for r in runs],
            }
    result = {"machine": machine(), "label": args.label, "seeds": args.seeds,
              "command": "python -m benchmarks.balanced_families " + " ".join(sys.argv[1:]),
              "summary": summary}
    path = args.results / f"balanced_families_{args.label}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    for key, row in summary.items():
        print(f"{key}: weighter {100 * row['weighter']['mean']:.2f} ± {100 * row['weighter']['std']:.2f} "
              f"vs CE {100 * row['ce']['mean']:.2f} ± {100 * row['ce']['std']:.2f}")


if __name__ == "__main__":
    main()
