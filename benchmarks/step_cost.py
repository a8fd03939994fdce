"""Per-iteration cost benchmarks: exact meta steps and a frozen weighter vs a plain CE step.

    python benchmarks/step_cost.py [--device cpu|cuda] [--repeats N] [--models mlp,cnn,resnet32]
        [--sections meta,frozen] [--amp] [--out benchmarks/results/step_cost_<device>.json]

Sections (each times its variants side by side on the same architecture, batch and process):

- ``meta``: a plain CE iteration (forward, backward, SGD step) and full CMW-Net (K=3)
  meta-training iterations as ``MetaWeighting`` runs them -- the meta step (look-ahead,
  meta forward/backward, Adam on the weighter) with each estimator, ``meta_exact``
  (second-order backward), ``meta_jvp`` (one forward-mode JVP) and ``meta_last-layer``
  (the approximation through the head only), then the real step on the look-ahead's kept
  forward (weighting, backward, SGD step); and ``meta_<estimator>_lagged``
  (``real_step = "lagged"``: the real step follows the look-ahead's own gradient, no real
  backward).
- ``frozen``: a CE iteration and ``WeightedLoss`` with a frozen CMW-Net (K=3, families
  fitted by k-means on long-tailed class counts) forward + backward + SGD step.
- ``fixmatch``: one FixMatch iteration (labelled batch B, unlabelled mu B = 7 B with weak and
  strong views, one forward of all three) with the threshold mask, a frozen CMW-Net mask and
  the meta-trained mask (``fixmatch-meta``), next to a CE iteration on B; the row records
  the frozen mask's cost over the threshold mask's (``frozen_over_threshold``).
- ``methods``: one training iteration of each registered method as ``weightzoo train``
  runs it (``Trainer._step`` on a synthetic training set with a clean meta set): ``ce``,
  ``mwnet``, ``cmwnet``, ``cmwnet-sl``, ``l2rw`` and ``arl`` (GCE), estimator ``auto``;
  and MW-Net with a meta step every 5 iterations (``meta_interval`` 5), with estimator
  ``auto`` and ``famus``, reported per iteration; and MW-Net with the lagged real step
  (``real_step = "lagged"``), every iteration and every 5 (``auto`` and ``famus``).

Method: every variant has its own copy of the same initial model and its own optimizer;
after warm-up iterations the variants run interleaved in rounds of ``--block`` iterations
each (the order reversed every round) so that background load hits all alike; every
iteration is timed on its own (with ``torch.cuda.synchronize()`` around it on CUDA;
Python's garbage collector paused).  Cheap steps run for at least ``--min-seconds`` per
section.  Reported per variant: median and IQR of the per-iteration milliseconds, the ratio
of its median to CE's, the median/IQR of the ratios of paired iterations, and (CUDA) the
peak memory of one iteration.  Inputs are synthetic (Gaussian images, uniform labels): the
cost of a step does not depend on the data.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from weightzoo.bilevel.estimators import build_estimator
from weightzoo.losses import per_sample_loss
from weightzoo.methods.base import Method, RunContext
from weightzoo.methods.fixmatch import FixMatch, FixMatchConfig, FixMatchMetaConfig
from weightzoo.methods.meta_weighting import weighting_meta_step
from weightzoo.methods.registry import build_method, method_spec
from weightzoo.models import build_model
from weightzoo.training.engine import Schedule, Trainer, TrainingSet
from weightzoo.weighting.nets import CMWNet
from weightzoo.weighting.sample_weighting import SampleWeighting
from weightzoo.weighting.weighted_loss import WeightedLoss

SCHEMA = "weightzoo.step_cost/2"
NUM_CLASSES = 10
MODELS: dict[str, tuple[int, int, int]] = {
    "mlp": (1, 28, 28), "cnn": (1, 28, 28), "resnet32": (3, 32, 32),
}
SECTIONS = ("meta", "frozen", "methods", "fixmatch")
FIXMATCH_MU = 7
METHOD_NAMES = ("ce", "mwnet", "cmwnet", "cmwnet-sl", "l2rw", "arl")
PEERS = ("higher", "torchopt")  # optional: pip install higher torchopt (benchmark-only)
AMORTISED = 5  # also timed: mwnet with a meta step every AMORTISED iterations, per iteration
# (section, model) pairs whose iterations take seconds on a CPU: run with --slow-repeats.
SLOW_ON_CPU = {("meta", "resnet32"), ("methods", "resnet32"), ("fixmatch", "cnn"), ("fixmatch", "resnet32")}
Step = Callable[[int], None]
Batches = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Settings:
    device: torch.device
    batch_size: int
    meta_batch_size: int
    warmup: int
    repeats: int
    slow_repeats: int
    min_seconds: float
    block: int
    amp: bool
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 5e-4
    meta_lr: float = 1e-3
    pool: int = 4  # distinct synthetic batches, cycled


def long_tail_counts(num_classes: int = NUM_CLASSES, top: int = 5000, ratio: float = 100.0) -> np.ndarray:
    """Exponentially long-tailed per-class counts (imbalance ratio ``ratio``)."""
    return np.array([round(top * ratio ** (-i / (num_classes - 1))) for i in range(num_classes)])


def sgd(model: nn.Module, s: Settings) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)


def autocast(s: Settings) -> torch.autocast:
    """bf16 autocast for the real forward passes when ``--amp`` on CUDA, else disabled."""
    return torch.autocast(s.device.type, dtype=torch.bfloat16, enabled=s.amp)


def synthetic(shape: tuple[int, ...], n: int, s: Settings, seed: int) -> Batches:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(n, *shape, generator=g).to(s.device),
         torch.randint(0, NUM_CLASSES, (n,), generator=g).to(s.device))
        for _ in range(s.pool)
    ]


def ce_step(model: nn.Module, s: Settings, data: Batches) -> Step:
    """Plain CE iteration: forward, ``F.cross_entropy``, backward, SGD step."""
    opt = sgd(model, s)

    def step(i: int) -> None:
        x, y = data[i % len(data)]
        with autocast(s):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def frozen_step(model: nn.Module, s: Settings, data: Batches) -> Step:
    """Frozen-weighter iteration: forward, ``WeightedLoss`` (CMW-Net K=3), backward, SGD step."""
    opt = sgd(model, s)
    crit = WeightedLoss.for_data(CMWNet(num_families=3), class_counts=long_tail_counts()).to(s.device)

    def step(i: int) -> None:
        x, y = data[i % len(data)]
        with autocast(s):
            logits = model(x)
        loss = crit(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def weighted_setup(s: Settings) -> tuple[SampleWeighting, torch.optim.Adam]:
    """A CMW-Net (K=3) weighting on long-tailed families and its Adam optimizer."""
    weighter = CMWNet(num_families=3).to(s.device)
    return (SampleWeighting.fit(weighter, long_tail_counts()).to(s.device),
            torch.optim.Adam(weighter.parameters(), lr=s.meta_lr))


def weighted_real_step(opt: torch.optim.Optimizer, weighting: SampleWeighting, logits: torch.Tensor,
                       y: torch.Tensor) -> None:
    """The real step: weights from the (updated) weighter, weighted loss, backward, SGD step."""
    losses = per_sample_loss("ce", logits.float(), y)
    loss = weighting.reduce(losses, weighting.weights(losses, y, checked=True))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def meta_iteration(model: nn.Module, s: Settings, data: Batches, meta: Batches, estimator: str,
                   lagged: bool = False) -> Step:
    """CMW-Net training iteration as ``MetaWeighting`` + ``Trainer`` run it: meta step on the
    weighter (keeping the look-ahead's forward), then the real step on that forward; with
    ``lagged`` (``real_step = "lagged"``) the real step follows the look-ahead's gradient."""
    opt = sgd(model, s)
    weighting, weighter_opt = weighted_setup(s)
    chosen = build_estimator(estimator)

    def step(i: int) -> None:
        x, y = data[i % len(data)]
        meta_x, meta_y = meta[i % len(meta)]
        kept = weighting_meta_step(model, weighting, weighter_opt, x, y, meta_x, meta_y, lr=s.lr,
                                   optimizer=opt, estimator=chosen, keep_forward=True,
                                   keep_gradient=lagged).forward
        kept.restore_buffers(model)
        if kept.grads is None:
            weighted_real_step(opt, weighting, kept.logits, y)
            return
        opt.zero_grad(set_to_none=True)
        for name, param in model.named_parameters():
            param.grad = kept.grads.get(name)
        opt.step()

    return step


def peer_iteration(model: nn.Module, s: Settings, data: Batches, meta: Batches, library: str) -> Step | None:
    """The same iteration written as MW-Net reimplementations write it with a peer library
    (None when it is not installed): ``higher`` (``innerloop_ctx`` and ``meta_loss.backward()``)
    or ``torchopt`` (``MetaSGD`` with its state extracted and recovered); the look-ahead, the
    meta step on the weighter, then a fresh real forward and the real step."""
    try:
        peer = __import__(library)
    except ImportError:
        return None
    opt = sgd(model, s)
    weighting, weighter_opt = weighted_setup(s)
    inner = (torch.optim.SGD(model.parameters(), lr=s.lr) if library == "higher"
             else peer.MetaSGD(model, lr=s.lr))

    def weighted_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        losses = per_sample_loss("ce", logits, y)
        return weighting.reduce(losses, weighting.weights(losses, y, grad=True, checked=True))

    def step(i: int) -> None:
        x, y = data[i % len(data)]
        meta_x, meta_y = meta[i % len(meta)]
        weighter_opt.zero_grad(set_to_none=True)
        if library == "higher":
            with peer.innerloop_ctx(model, inner) as (fmodel, diffopt):
                diffopt.step(weighted_loss(fmodel(x), y))
                F.cross_entropy(fmodel(meta_x), meta_y).backward()
        else:
            saved = peer.extract_state_dict(model, by="reference", detach_buffers=True)
            inner.step(weighted_loss(model(x), y))
            F.cross_entropy(model(meta_x), meta_y).backward()
            peer.recover_state_dict(model, saved)
        weighter_opt.step()
        weighted_real_step(opt, weighting, model(x), y)

    return step


def method_iteration(model: nn.Module, s: Settings, name: str, shape: tuple[int, ...],
                     meta_interval: int = 1, method: Method | None = None,
                     estimator: str | None = None, real_step: str | None = None) -> Step:
    """One ``Trainer`` iteration of method ``name`` (or of ``method``, built already) on a
    synthetic training set (every batch after the first epoch's warm-up-free start), with a
    clean meta set of 10 per class. With ``meta_interval`` k > 1 one call runs k iterations
    (one meta step among them)."""
    g = torch.Generator().manual_seed(3)
    n = s.batch_size * s.pool * (1 + FIXMATCH_MU if name == "fixmatch" else 1)  # unlabelled: mu x B
    x, y = torch.randn(n, *shape, generator=g), torch.randint(0, NUM_CLASSES, (n,), generator=g)
    meta_x = torch.randn(10 * NUM_CLASSES, *shape, generator=g)
    meta_y = torch.arange(NUM_CLASSES).repeat(10)
    data = TrainingSet(x, y, x[:10], y[:10], NUM_CLASSES)
    schedule = Schedule(epochs=1, batch_size=s.batch_size, lr=s.lr, momentum=s.momentum,
                        weight_decay=s.weight_decay, amp=s.amp)
    trainer = Trainer(model, data, schedule, device=s.device, progress=False)
    if method is None:
        config = method_spec(name).config_class()
        if meta_interval > 1:
            config.meta.meta_interval = meta_interval
        if estimator is not None:
            config.estimator = estimator
        if real_step is not None:
            config.real_step = real_step
        method = build_method(name, config)
    method.bind(RunContext(NUM_CLASSES, meta_x, meta_y, seed=0))
    method.setup(trainer)
    method.on_epoch_start(trainer, 0)
    batches = trainer._batches(0, *method.batch_pool(trainer))

    def step(i: int) -> None:
        for it in range(i * meta_interval, (i + 1) * meta_interval):
            batch = method.collate(trainer, batches[it % len(batches)], epoch=0, iteration=it,
                                   lr=s.lr, warmup=False)
            trainer._step(method, batch)

    return step


def summary(ms: list[float]) -> dict[str, float | int]:
    q1, med, q3 = (float(v) for v in np.percentile(ms, [25, 50, 75]))
    return {"median": round(med, 3), "q1": round(q1, 3), "q3": round(q3, 3), "iqr": round(q3 - q1, 3),
            "min": round(min(ms), 3), "n": len(ms)}


def timed(step: Step, i: int, device: torch.device) -> float:
    """Milliseconds of one call of ``step`` (device-synchronised on CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    step(i)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) * 1e3


def peak_memory_mib(step: Step, i: int, device: torch.device) -> float | None:
    """Peak CUDA memory of one call of ``step`` (None on CPU, where torch keeps no such count)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    step(i)
    torch.cuda.synchronize(device)
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


def compare(
    steps: dict[str, Step], s: Settings, repeats: int, block: int, min_seconds: float
) -> dict[str, Any]:
    """Warm up all, then interleave blocks of ``block`` iterations, reversing the order every
    round, for at least ``repeats`` iterations each and, for cheap steps, at least
    ``min_seconds`` (at most 20 * ``repeats`` iterations). ``steps["ce"]`` is the baseline."""
    for i in range(s.warmup):
        for step in steps.values():
            step(i)
    memory = {name: peak_memory_mib(step, s.warmup, s.device) for name, step in steps.items()}
    times: dict[str, list[float]] = {name: [] for name in steps}
    gc.collect()
    gc.disable()  # no collector pauses inside timed iterations
    try:
        started = time.perf_counter()
        done, round_ = 0, 0
        while done < repeats or (time.perf_counter() - started < min_seconds and done < 20 * repeats):
            n = block if done >= repeats else min(block, repeats - done)
            order = list(steps) if round_ % 2 == 0 else list(steps)[::-1]
            for name in order:
                times[name] += [timed(steps[name], s.warmup + 1 + done + k, s.device) for k in range(n)]
            done, round_ = done + n, round_ + 1
        elapsed = time.perf_counter() - started
    finally:
        gc.enable()
    base = summary(times["ce"])
    variants = {}
    for name, ms in times.items():
        row = summary(ms)
        variants[name] = {
            "ms": row, "peak_memory_mib": memory[name],
            "ratio_to_ce": round(float(row["median"]) / float(base["median"]), 3),
            "overhead_ms": round(float(row["median"]) - float(base["median"]), 3),
            "paired_ratio_to_ce": summary([v / b for b, v in zip(times["ce"], ms, strict=True)]),
        }
    return {"variants": variants, "iterations": done, "rounds": round_, "block": block,
            "seconds": round(elapsed, 1)}


def run_section(section: str, name: str, s: Settings) -> dict[str, Any]:
    shape = MODELS[name]
    torch.manual_seed(0)
    model = build_model(name, NUM_CLASSES, shape).to(s.device).train()
    data = synthetic(shape, s.batch_size, s, seed=1)
    steps = {"ce": ce_step(copy.deepcopy(model), s, data)}
    if section == "methods":
        steps.update({f"method_{m}": method_iteration(copy.deepcopy(model), s, m, shape)
                      for m in METHOD_NAMES})
        steps[f"method_mwnet_interval{AMORTISED}"] = method_iteration(copy.deepcopy(model), s, "mwnet",
                                                                      shape, AMORTISED)
        steps[f"method_mwnet_famus_interval{AMORTISED}"] = method_iteration(
            copy.deepcopy(model), s, "mwnet", shape, AMORTISED, estimator="famus")
        steps["method_mwnet_lagged"] = method_iteration(copy.deepcopy(model), s, "mwnet", shape,
                                                        real_step="lagged")
        for estimator in ("auto", "famus"):
            steps[f"method_mwnet_{estimator}_lagged_interval{AMORTISED}"] = method_iteration(
                copy.deepcopy(model), s, "mwnet", shape, AMORTISED, estimator=estimator, real_step="lagged")
    elif section == "fixmatch":
        semi = {"labeled_per_class": 10, "mu": FIXMATCH_MU}
        variants = {"threshold": FixMatch(FixMatchConfig(**semi)),
                    "frozen": FixMatch(FixMatchConfig(**semi), weighter=CMWNet(num_families=3)),
                    "meta": FixMatch(FixMatchMetaConfig(**semi))}
        steps.update({f"fixmatch_{v}": method_iteration(copy.deepcopy(model), s, "fixmatch", shape,
                                                        method=m) for v, m in variants.items()})
    elif section == "meta":
        meta = synthetic(shape, s.meta_batch_size, s, seed=2)
        for estimator in ("exact", "jvp", "last-layer", "famus"):
            steps[f"meta_{estimator}"] = meta_iteration(copy.deepcopy(model), s, data, meta, estimator)
        for estimator in ("exact", "jvp", "famus"):
            steps[f"meta_{estimator}_lagged"] = meta_iteration(copy.deepcopy(model), s, data, meta,
                                                               estimator, lagged=True)
        for library in PEERS:
            peer = peer_iteration(copy.deepcopy(model), s, data, meta, library)
            if peer is not None:
                steps[f"peer_{library}"] = peer
    else:
        steps["frozen"] = frozen_step(copy.deepcopy(model), s, data)
    slow = s.device.type == "cpu" and (section, name) in SLOW_ON_CPU
    repeats = min(s.repeats, s.slow_repeats) if slow else s.repeats
    row = {"section": section, "model": name, "input_shape": list(shape),
           "params": sum(p.numel() for p in model.parameters()), "repeats": repeats}
    block = 1 if slow else min(s.block, repeats)
    row.update(compare(steps, s, repeats, block, 0.0 if slow else s.min_seconds))
    if section == "fixmatch":  # the goal: frozen-weighter mask / threshold mask <= 1.05
        threshold, frozen = (row["variants"][f"fixmatch_{v}"] for v in ("threshold", "frozen"))
        row["frozen_over_threshold"] = round(frozen["ms"]["median"] / threshold["ms"]["median"], 3)
    for name, amortised in row["variants"].items():  # one call ran AMORTISED iterations
        if not name.endswith(f"_interval{AMORTISED}"):
            continue
        amortised["ms"] = {k: (round(v / AMORTISED, 3) if k != "n" else v)
                           for k, v in amortised["ms"].items()}
        amortised["ratio_to_ce"] = round(amortised["ratio_to_ce"] / AMORTISED, 3)
        amortised["paired_ratio_to_ce"] = {k: (round(v / AMORTISED, 3) if k != "n" else v)
                                           for k, v in amortised["paired_ratio_to_ce"].items()}
        amortised["iterations_per_call"] = AMORTISED
    return row


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(), "python": platform.python_version(), "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(), "device": str(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return info


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--repeats", type=int, default=30, help="timed iterations per variant")
    p.add_argument("--slow-repeats", type=int, default=5,
                   help="timed iterations for the ResNet-32 meta iteration on CPU (seconds each)")
    p.add_argument("--min-seconds", type=float, default=5.0,
                   help="keep timing cheap steps for this long per comparison (at most 20x --repeats)")
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations per variant first")
    p.add_argument("--block", type=int, default=5, help="consecutive iterations per variant per round")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--meta-batch-size", type=int, default=100)
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help="comma-separated: meta, frozen, methods, fixmatch")
    p.add_argument("--amp", action="store_true", help="bf16 autocast for the real forward (CUDA only)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: torch's); use 1 on a CPU shared with other jobs")
    p.add_argument("--out", type=Path, default=None,
                   help="results JSON (default benchmarks/results/step_cost_<device>.json)")
    args = p.parse_args(argv)
    for key, known in (("models", MODELS), ("sections", SECTIONS)):
        names = [n.strip() for n in getattr(args, key).split(",") if n.strip()]
        unknown = [n for n in names if n not in known]
        if unknown or not names:
            p.error(f"--{key}: unknown {unknown or 'empty'}; choose from {', '.join(known)}")
        setattr(args, key, names)
    if min(args.repeats, args.slow_repeats, args.block, args.threads or 1) < 1:
        p.error("--repeats, --slow-repeats, --block and --threads must be >= 1")
    if min(args.warmup, args.min_seconds) < 0:
        p.error("--warmup and --min-seconds must be >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available")
    if args.amp and args.device != "cuda":
        p.error("--amp needs --device cuda")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    s = Settings(device=device, batch_size=args.batch_size, meta_batch_size=args.meta_batch_size,
                 warmup=args.warmup, repeats=args.repeats, slow_repeats=args.slow_repeats,
                 min_seconds=args.min_seconds,
                 block=args.block, amp=args.amp)
    out = args.out or Path(__file__).parent / "results" / f"step_cost_{device.type}.json"
    report: dict[str, Any] = {
        "schema": SCHEMA, "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python benchmarks/step_cost.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine(device), "load_average_start": list(os.getloadavg()),
        "settings": {k: (str(v) if isinstance(v, torch.device) else v) for k, v in vars(s).items()},
        "weighter": "cmwnet K=3, hidden 100, normalization sum; families by k-means on long-tailed counts",
        "results": [],
    }
    for section in args.sections:
        for name in args.models:
            row = run_section(section, name, s)
            report["results"].append(row)
            cells = "  ".join(f"{v} {r['ms']['median']:9.2f} ms ({r['ratio_to_ce']:.2f}x)"
                              for v, r in row["variants"].items())
            print(f"{section:6s} {name:9s} {cells}  (n={row['iterations']}, {row['seconds']} s)", flush=True)
    report["load_average_end"] = list(os.getloadavg())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}  (load average start {report['load_average_start']}, "
          f"end {report['load_average_end']})")
    return report


if __name__ == "__main__":
    main()
