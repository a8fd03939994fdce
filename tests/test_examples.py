"""The examples run as a user would run them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from weightzoo import MWNet, save_artifact

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    # One thread: tiny models on a busy machine are much faster without intra-op threads.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_user_loop_with_a_weighter_directory(tmp_path: Path) -> None:
    save_artifact(MWNet(), tmp_path / "weighter")
    result = run_example("user_loop.py", str(tmp_path / "weighter"), "--epochs", "2", "--warmup-epochs", "1")
    assert result.returncode == 0, result.stderr
    accuracies = re.findall(r"clean test accuracy, (CE|weighted \(.+\)): (\d+\.\d+)%", result.stdout)
    assert [name.split()[0] for name, _ in accuracies] == ["CE", "weighted"], result.stdout
    assert all(0 <= float(acc) <= 100 for _, acc in accuracies)


def test_drop_in_weighter_from_step_zero_trains() -> None:
    """The README loop with the criterion swapped in from the first step and nothing else
    changed: the shipped noise weighter runs its own 1-epoch plain-CE warm-up (its
    meta-training schedule) and does not lose to CE on noisy digits (sym 40%, 30 epochs)."""
    result = run_example("user_loop.py", "mwnet-fmnist-sym40")
    assert result.returncode == 0, result.stderr
    accuracies = dict(re.findall(r"clean test accuracy, (CE|weighted)[^:]*: (\d+\.\d+)%", result.stdout))
    assert float(accuracies["weighted"]) >= float(accuracies["CE"]) - 1.0, result.stdout


def test_fixmatch_loop_with_the_shipped_fixmatch_weighter() -> None:
    result = run_example("fixmatch_loop.py", "--epochs", "2", "--warmup-epochs", "1")
    assert result.returncode == 0, result.stderr
    accuracies = re.findall(r"test accuracy, (FixMatch(?: \+ .+)?): (\d+\.\d+)%", result.stdout)
    names = [name for name, _ in accuracies]
    assert names == ["FixMatch", "FixMatch + cmwnet-fixmatch4-fmnist"], result.stdout
    assert all(10 <= float(acc) <= 100 for _, acc in accuracies)
