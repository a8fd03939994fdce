"""Partial-label benchmark (CMW-Net §7.1, Fig. 9 in a CPU-sized setting): PRODEN vs PRODEN +
meta-trained CMW-Net vs PRODEN + a frozen zoo weighter (meta-trained on another dataset's
PRODEN labels), and PRODEN + plain CE as the second-stage control, over flipping
probabilities q and seeds, identical data per (q, seed).

    python -m benchmarks.partial [--qs 0.1 0.3 0.5 0.7] [--seeds 0 1 2] [--parallel 2]
        [--kind partial|partial-pair] [--meta-set train|singletons]

``--meta-set singletons``: stage 2's meta set is the samples whose candidate set holds one
label (exactly labelled, held out of stage 2; no mixup) instead of the recipe's set rebuilt
from the training data; ``partial:q`` sets are never singletons, so it needs
``--kind partial-pair``.

Also measures PRODEN whose stage-1 losses are weighted by the frozen weighter
(``regime.proden_weighter``) at ``--weighted-qs``. Writes benchmarks/results/partial_mnist5k.json
and .md: test accuracy (%) at the last epoch, mean ± std, and the accuracy of PRODEN's
predicted training labels.
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

RECIPE = "mnist5k-partial30-cmwnet"
ZOO = "cmwnet-fmnist-partial30"
# apply's schedule = the recipe's
APPLY_SCHEDULE = ["--epochs", "20", "--milestones", "12,16", "--warmup-epochs", "1", "--lr", "0.1"]
COLUMNS = ("proden", "proden+ce", "proden+cmwnet", "proden+frozen", "proden-weighted")


def meta_job(
    q: float, seed: int, runs: Path, kind: str, meta_set: str, overrides: list[str]
) -> tuple[list[str], Path]:
    """PRODEN (stage 1), then CMW-Net meta-trained on its labels, with the PRODEN + CE control."""
    base = runs / f"q{q}" / f"seed{seed}"
    meta = (["--set", "meta.source=singletons", "--set", "meta.mixup_alpha=0.0"]
            if meta_set == "singletons" else [])
    meta += [x for override in overrides for x in ("--set", override)]
    return (["train", RECIPE, "--out", str(base / "meta"), "--seed", str(seed), "--set",
             f"data.bias={kind}:{q}", *meta, "--baseline", "ce"], base / "meta" / "metrics.json")


def zoo_jobs(
    q: float, seed: int, runs: Path, zoo: str, weighted: bool, kind: str
) -> list[tuple[list[str], Path]]:
    """PRODEN + the frozen zoo weighter (apply), and PRODEN weighted by it in stage 1."""
    base = runs / f"q{q}" / f"seed{seed}"
    bias = f"data.bias={kind}:{q}"
    jobs = [(["apply", zoo, "--data", "mnist5k", "--bias", f"{kind}:{q}", "--regime", "partial",
              "--seed", str(seed), *APPLY_SCHEDULE, "--out", str(base / "frozen")],
             base / "frozen" / "comparison.json")]
    if weighted:
        jobs.append((["train", RECIPE, "--out", str(base / "weighted"), "--seed", str(seed), "--set", bias,
                      "--set", f"regime.proden_weighter={zoo}", "--set", "method.name=ce"],
                     base / "weighted" / "metrics.json"))
    return jobs


def collect(base: Path) -> dict[str, float | None]:
    meta = read_json(base / "meta" / "metrics.json")
    row = {"proden": meta["proden"]["final"]["test_acc"],
           "proden+ce": read_json(base / "meta" / "baselines" / "ce" / "metrics.json")["final"]["test_acc"],
           "proden+cmwnet": meta["final"]["test_acc"],
           "proden+cmwnet_best": meta["final"]["best_test_acc"],
           "label_acc": meta["proden"]["label_acc"], "proden+frozen": None}
    frozen = base / "frozen" / "comparison.json"
    if frozen.exists():
        row["proden+frozen"] = read_json(frozen)["runs"]["weighter"]["test_acc"]
    weighted = base / "weighted" / "metrics.json"
    row["proden-weighted"] = read_json(weighted)["proden"]["final"]["test_acc"] if weighted.exists() else None
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--qs", nargs="+", type=float, default=[0.1, 0.3, 0.5, 0.7])
    parser.add_argument("--weighted-qs", nargs="*", type=float, default=[0.3, 0.7])
    parser.add_argument("--zoo", default=ZOO)
    add_run_options(parser, "runs/bench-partial", "benchmarks/results/partial_mnist5k")
    parser.add_argument("--meta-only", action="store_true",
                        help="Run the meta-training jobs only (no frozen zoo weighter).")
    parser.add_argument("--kind", choices=["partial", "partial-pair"], default="partial")
    parser.add_argument("--meta-set", choices=["train", "singletons"], default="train")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a recipe override for the meta-training jobs (repeatable)")
    args = parser.parse_args()
    jobs = [meta_job(q, s, args.runs, args.kind, args.meta_set, args.overrides)
            for q in args.qs for s in args.seeds]
    if not args.meta_only:
        jobs += [job for q in args.qs for s in args.seeds
                 for job in zoo_jobs(q, s, args.runs, args.zoo, q in args.weighted_qs, args.kind)]
    run_jobs(jobs, args.parallel, args.runs / "jobs.log")
    summary = {}
    for q in args.qs:
        rows = [collect(args.runs / f"q{q}" / f"seed{s}") for s in args.seeds]
        keys = (*COLUMNS, "proden+cmwnet_best", "label_acc")
        summary[str(q)] = {key: mean_std([r[key] for r in rows]) for key in keys if rows[0][key] is not None}
        summary[str(q)]["per_seed"] = rows
    result = {"machine": machine(), "seeds": args.seeds, "recipe": RECIPE, "kind": args.kind,
              "meta_set": args.meta_set, "overrides": args.overrides,
              "zoo_weighter": None if args.meta_only else args.zoo,
              "command": "python -m benchmarks.partial " + " ".join(sys.argv[1:]), "summary": summary}
    write_results(args.results, result, markdown)


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"{machine_line(m)}; "
             f"MNIST-5k, MLP, 20 epochs per stage, `{result.get('kind', 'partial')}:q` candidate "
             f"sets, stage-2 meta set `{result.get('meta_set', 'train')}`, seeds {result['seeds']}; "
             "test accuracy (%) at the last epoch, mean ± std. "
             f"Frozen weighter: {result['zoo_weighter']}.", "",
             "| q | PRODEN | PRODEN + CE | PRODEN + CMW-Net (meta) | PRODEN + frozen zoo | "
             "PRODEN, stage 1 weighted | predicted-label acc |", "|---|---|---|---|---|---|---|"]
    for q, row in result["summary"].items():
        cells = [pm(row[c]) if c in row else "-" for c in (*COLUMNS, "label_acc")]
        lines.append(f"| {q} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
