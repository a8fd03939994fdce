"""The zoo rule's verdict per bias type, with seed-paired confidence intervals.

Reads transfer-matrix results (``benchmarks/transfer_matrix.py`` JSON files). For each bias type
in ``weightzoo.artifact.recommend.RULE``, the rule's pick (with ``+drw`` where the rule says
deferred re-balancing) is compared with each cell's best robust loss (GCE, SCE or
class-balanced CE, the best by mean over the cell's seeds), paired by seed: d = pick − best on
the same seed's data. A cell's gain is the mean of d; a type's gain is the mean over its cells
(each target counts once), with a normal 95% interval from the cells' standard errors.
A type is

- **ahead** when the interval's lower end is above 0;
- **level** when it is at or above ``-margin`` (non-inferiority within the margin);
- **behind** otherwise.

A type counts as matched when it is ahead or level (the zoo's goal: 3 of the 4 types). The
default margin of 0.5 points was fixed (and committed) before any 10-seed result was read. It
is below the swing of a 3-seed cell mean under a perturbation of the method that should not
matter (GCE q = 0.635 against the learned 0.6354: 1.2 points on digits-cnn, 0.4 on MNIST-5k).
The same numbers at margin 0 (``--margin 0``) are the strict reading.

    python -m benchmarks.rule_verdict --inputs benchmarks/results/transfer_matrix_seeds10_noise.json ...
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from benchmarks.common import write_results
from benchmarks.transfer_matrix import DRW, ROBUST
from weightzoo.artifact.recommend import RULE

Z95 = 1.959964


def paired(pick: list[float], other: list[float]) -> dict[str, float]:
    """Mean and standard error (points) of the per-seed differences pick − other."""
    if len(pick) != len(other) or len(pick) < 2:
        raise ValueError(f"paired seeds needed: {len(pick)} pick values, {len(other)} others")
    diffs = [100 * (a - b) for a, b in zip(pick, other, strict=True)]
    mean = sum(diffs) / len(diffs)
    var = sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)
    return {"mean": mean, "se": math.sqrt(var / len(diffs)), "n": len(diffs)}


def merged_cells(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every cell of the results files, its rows merged across files run on the same seeds;
    where files ran a cell on different seeds, the file with the most seeds gives the cell
    (rows must pair by seed)."""
    cells: dict[str, dict[str, Any]] = {}
    for result in results:
        seeds = list(result["seeds"])
        for cell, row in result["summary"].items():
            held = cells.get(cell)
            if held is None or len(seeds) > len(held["seeds"]):
                cells[cell] = {**row, "rows": dict(row["rows"]), "seeds": seeds}
            elif seeds == held["seeds"]:
                held["rows"] = {**row["rows"], **held["rows"]}
            elif len(seeds) == len(held["seeds"]):
                raise ValueError(f"{cell}: run on seeds {held['seeds']} and on {seeds}, which do not pair")
    return cells


def verdict(cells: dict[str, dict[str, Any]], margin: float) -> dict[str, Any]:
    """Per declared bias: each cell's gain over CE and over its best robust loss, the type's
    gain with its interval, and whether the type is ahead, level or behind."""
    types = {}
    for declared, (bias, entry, rebalance) in RULE.items():
        pick = entry + (DRW if rebalance == "deferred" else "")
        rows = {cell: row for cell, row in cells.items() if cell.split()[1] == bias and pick in row["rows"]}
        if not rows:
            continue
        per_cell = {}
        for cell, row in sorted(rows.items()):
            values = row["rows"]
            best = max(ROBUST, key=lambda b: values[b]["mean"])
            per_cell[cell] = {"best_robust": best,
                              "over_best": paired(values[pick]["values"], values[best]["values"]),
                              "over_ce": paired(values[pick]["values"], values["ce"]["values"])}
        gains = [c["over_best"] for c in per_cell.values()]
        mean = sum(g["mean"] for g in gains) / len(gains)
        se = math.sqrt(sum(g["se"] ** 2 for g in gains)) / len(gains)
        low, high = mean - Z95 * se, mean + Z95 * se
        status = "ahead" if low > 0 else "level" if low >= -margin else "behind"
        types[declared] = {"pick": pick, "cells": per_cell, "gain": mean, "se": se, "ci95": [low, high],
                           "status": status, "matched": status != "behind",
                           "beats_ce_in": sum(c["over_ce"]["mean"] > 0 for c in per_cell.values())}
    return {"margin": margin, "types": types,
            "types_matched": sum(t["matched"] for t in types.values()),
            "cells_beating_ce": sum(t["beats_ce_in"] for t in types.values()),
            "cells": sum(len(t["cells"]) for t in types.values())}


def markdown(result: dict[str, Any]) -> str:
    lines = [f"Rule v0.8 per bias type (margin {result['margin']} points; gain = pick − best robust "
             "loss, seed-paired, points; ± = standard error):", "",
             "| bias → pick | cells: gain over best robust (seeds) | type gain, 95% CI | verdict "
             "| beats CE |",
             "|---|---|---|---|---|"]
    for declared, t in result["types"].items():
        cells = "; ".join(f"{cell.split()[0]} {c['over_best']['mean']:+.2f} ± {c['over_best']['se']:.2f} "
                          f"vs {c['best_robust']} ({c['over_best']['n']})" for cell, c in t["cells"].items())
        lines.append(f"| {declared} → `{t['pick']}` | {cells} | {t['gain']:+.2f} [{t['ci95'][0]:+.2f}, "
                     f"{t['ci95'][1]:+.2f}] | {t['status']} | {t['beats_ce_in']} of {len(t['cells'])} |")
    lines += ["", f"Types matched (ahead or level): {result['types_matched']} of {len(result['types'])}; "
              f"CE beaten in {result['cells_beating_ce']} of {result['cells']} cells."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", nargs="+", type=Path, required=True,
                        help="transfer-matrix results JSON files")
    parser.add_argument("--margin", type=float, default=0.5, help="non-inferiority margin, points")
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/rule_verdict"))
    args = parser.parse_args(argv)
    cells = merged_cells([json.loads(p.read_text()) for p in args.inputs])
    result = {"inputs": [str(p) for p in args.inputs], **verdict(cells, args.margin)}
    write_results(args.results, result, markdown)


if __name__ == "__main__":
    main()
