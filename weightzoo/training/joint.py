"""Multi-source training: several trainers -- one model and one data set each -- take turns,
a step each, and their methods share what they learn (one weighter meta-learned on every
source: each source's meta step is one Adam update of it, see ``Method.join``).

A step of every source per round, until the largest source's epoch ends (smaller sources
finish their epoch earlier, so the larger ones take more of the weighter's meta steps); then
every source evaluates (its ``seconds`` is the joint epoch's time up to then). One
checkpoint holds every source's state after each epoch, so an interrupted run resumes
bit-identically.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from weightzoo import distributed
from weightzoo.methods.base import Method
from weightzoo.training.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from weightzoo.training.engine import EpochRun, Trainer


def fit_jointly(
    trainers: Sequence[Trainer], methods: Sequence[Method], out_dir: str | Path | None = None, *,
    resume: bool = False,
) -> list[list[dict[str, Any]]]:
    """Train ``trainers[i]`` with ``methods[i]`` in turns, the methods joined to ``methods[0]``;
    ``out_dir/checkpoint.pt`` is written after every epoch, and with ``resume`` read back
    when it exists. Returns each source's history. One process only (not under torchrun),
    and every trainer must have the same number of epochs."""
    if not trainers or len(trainers) != len(methods):
        raise ValueError(f"{len(trainers)} trainers for {len(methods)} methods: one method per source")
    if distributed.rank_and_world()[1] > 1:
        raise ValueError("multi-source training runs in one process, not under torchrun")
    epochs = {t.schedule.epochs for t in trainers}
    if len(epochs) > 1:
        raise ValueError(f"the sources' schedules differ in epochs ({sorted(epochs)}): they train in turns")
    lead = methods[0]
    if any(type(m) is not type(lead) or getattr(m, "config", None) != getattr(lead, "config", None)
           for m in methods):
        raise ValueError("the sources' methods differ in class or config: one method, one artifact")
    if len({id(m) for m in methods}) < len(methods) or len({id(t) for t in trainers}) < len(trainers):
        raise ValueError("each source needs its own trainer and its own method object")
    devices = {str(t.device) for t in trainers}
    classes = {t.data.num_classes for t in trainers}
    if len(devices) > 1 or len(classes) > 1:
        raise ValueError(f"the sources must share one device and one number of classes (devices "
                         f"{sorted(devices)}, classes {sorted(classes)}): the artifact records one")
    path = Path(out_dir) / CHECKPOINT_NAME if out_dir is not None else None
    if resume and path is None:
        raise ValueError("resume needs an output directory (where checkpoint.pt is written)")
    for trainer, method in zip(trainers, methods, strict=True):
        trainer.prepare(method)
    for method in methods:
        method.join(lead)
    if resume and path is not None and path.exists():
        _restore(path, trainers, methods)
    for epoch in range(trainers[0].start_epoch, epochs.pop()):
        pairs = zip(trainers, methods, strict=True)
        runs = [EpochRun(t, m, epoch, position=i) for i, (t, m) in enumerate(pairs)]
        active = runs
        while active:
            active = [run for run in active if run.step()]
        for trainer, run in zip(trainers, runs, strict=True):
            trainer.history.append(run.finish())
        if path is not None:
            save_checkpoint(path, {"sources": [t.checkpoint_state(m, epoch)
                                               for t, m in zip(trainers, methods, strict=True)]})
    return [trainer.history for trainer in trainers]


def _restore(path: Path, trainers: Sequence[Trainer], methods: Sequence[Method]) -> None:
    """Every source's state from one joint checkpoint (refused when written by another run)."""
    sources = load_checkpoint(path).get("sources")
    if not isinstance(sources, list) or len(sources) != len(trainers):
        found = f"a run of {len(sources)} source(s)" if isinstance(sources, list) else "a single-source run"
        raise ValueError(f"{path}: written by {found}, not of these {len(trainers)}; resume the same "
                         "run, or pick another output directory")
    for trainer, method, state in zip(trainers, methods, sources, strict=True):
        trainer.restore(method, state, path)
