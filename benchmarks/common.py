"""Shared helpers for the accuracy benchmarks: run CLI jobs in parallel (resumable: a job whose
output already holds its result file is skipped) and summarise seeds as mean ± std."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

WEIGHTZOO = [sys.executable, "-m", "weightzoo.cli.main"]


def run_jobs(jobs: list[tuple[list[str], Path]], parallel: int, log: Path) -> None:
    """Run ``weightzoo ARGS`` for every (args, result_file) whose result file is missing,
    ``parallel`` at a time, each with one torch thread; failures are logged and re-raised."""
    todo = [(args, done) for args, done in jobs if not done.exists()]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log.parent.mkdir(parents=True, exist_ok=True)

    def one(item: tuple[list[str], Path]) -> None:
        args, _ = item
        started = time.time()
        proc = subprocess.run([*WEIGHTZOO, *args, "--no-progress"], env=env, capture_output=True,
                              text=True, check=False)
        with log.open("a", encoding="utf-8") as f:
            f.write(f"[{time.time() - started:7.1f}s rc={proc.returncode}] weightzoo {' '.join(args)}\n")
            if proc.returncode:
                f.write(proc.stderr[-2000:] + "\n")
        if proc.returncode:
            raise RuntimeError(f"job failed: weightzoo {' '.join(args)}: {proc.stderr.strip()[-300:]}")

    print(f"{len(todo)} of {len(jobs)} jobs to run, {parallel} at a time", file=sys.stderr)
    with ThreadPoolExecutor(parallel) as pool:
        for _ in pool.map(one, todo):
            pass


def add_run_options(parser: argparse.ArgumentParser, runs: str, results: str) -> None:
    """The options every multi-seed benchmark takes: --seeds, --parallel, --runs (run
    directories, reused when finished) and --results (the JSON / markdown path)."""
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--runs", type=Path, default=Path(runs))
    parser.add_argument("--results", type=Path, default=Path(results))


def machine_line(m: dict[str, Any]) -> str:
    """'Machine: CPU (N cores), torch V, DATE UTC' for a results table's header."""
    gpu = f", GPU {m['device']}" if m.get("device", "cpu") != "cpu" else ""
    return f"Machine: {m['cpu']} ({m['cores']} cores){gpu}, torch {m['torch']}, {m['date_utc']} UTC"


def mean_std(values: list[float]) -> dict[str, Any]:
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
            "n": int(arr.size), "values": [float(v) for v in arr]}


def pm(stat: dict[str, Any]) -> str:
    """'mean ± std' in percent."""
    return f"{100 * stat['mean']:.2f} ± {100 * stat['std']:.2f}"


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return {"date_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"), "cpu": cpu,
            "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            # the device `weightzoo` jobs run on (their --device default is auto)
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}


def write_results(path: Path, result: dict[str, Any], markdown: Callable[[dict], str]) -> None:
    """Write ``result`` to PATH.json and its markdown table to PATH.md, and print the table."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    path.with_suffix(".md").write_text(table + "\n")
    print(table)


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def accuracy_cells(row: dict[str, Any]) -> str:
    """Markdown cells 'test | head | medium | tail' (mean ± std, %) of a summary row."""
    return " | ".join(pm(row[k]) for k in ("test_acc", "head_acc", "medium_acc", "tail_acc"))
