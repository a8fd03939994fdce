"""Data-parallel meta-training cost: one MW-Net meta-training iteration (jvp estimator, global
batch 100, meta batch 100) at world sizes 1 and 2, under torchrun (gloo on CPU, one torch
thread per process; NCCL on GPU).

    python -m benchmarks.ddp_scaling [--model cnn] [--iterations 20] [--worlds 1 2]
        [--device cpu] [--out benchmarks/results/ddp_scaling_cpu.json]

Each world size runs in its own torchrun job: a ``Trainer`` with ``MetaWeighting``
(estimator ``jvp``, the data-parallel route) on a synthetic training set; after 3 warm-up
iterations every iteration is timed on rank 0 between two barriers. Reported: median and
IQR of the milliseconds per global iteration, and the speed-up over world size 1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import machine

SHAPES = {"mlp": (1, 28, 28), "cnn": (1, 28, 28), "resnet32": (3, 32, 32)}


def worker(model_name: str, iterations: int, device: str, out: Path) -> None:
    """One rank of a timed run (launched by torchrun)."""
    import torch

    from weightzoo import distributed
    from weightzoo.methods.meta_weighting import MetaConfig, MetaWeighting, MWNetConfig
    from weightzoo.models import build_model
    from weightzoo.training.engine import Schedule, Trainer, TrainingSet

    torch.set_num_threads(1)
    shape = SHAPES[model_name]
    g = torch.Generator().manual_seed(0)
    n = 100 * (iterations + 3)
    x, y = torch.randn(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g)
    data = TrainingSet(x, y, x[:100], y[:100], 10)
    torch.manual_seed(0)
    model = build_model(model_name, 10, shape)
    config = MWNetConfig(estimator="jvp", meta=MetaConfig(meta_batch_size=100))
    method = MetaWeighting(config, kind="mwnet", meta_x=x[:100], meta_y=y[:100])
    trainer = Trainer(model, data, Schedule(epochs=1, batch_size=100, amp=False), device=device,
                      progress=False)
    method.setup(trainer)
    method.on_epoch_start(trainer, 0)
    times = []
    for i, index in enumerate(trainer._batches(0)):
        batch = method.collate(trainer, index, epoch=0, iteration=i, lr=0.1, warmup=False)
        distributed.barrier()
        started = time.perf_counter()
        trainer._step(method, batch)
        distributed.barrier()
        if i >= 3:
            times.append((time.perf_counter() - started) * 1e3)
    if trainer.rank == 0:
        out.write_text(json.dumps({"world": trainer.world, "ms": times}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="cnn", choices=sorted(SHAPES))
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--worlds", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or Path(f"benchmarks/results/ddp_scaling_{args.device}.json")
    rows = []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo"}
    with tempfile.TemporaryDirectory() as tmp:
        for world in args.worlds:
            result = Path(tmp) / f"world{world}.json"
            subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={world}",
                            "--master_addr=127.0.0.1", "--master_port=29517", "-m", "benchmarks.ddp_scaling",
                            "--worker", args.model, str(args.iterations), args.device, str(result)],
                           env=env, check=True)
            ms = json.loads(result.read_text())["ms"]
            q1, med, q3 = np.percentile(ms, [25, 50, 75])
            rows.append({"world": world, "median_ms": round(float(med), 2), "q1_ms": round(float(q1), 2),
                         "q3_ms": round(float(q3), 2), "iterations": len(ms)})
    base = rows[0]["median_ms"]
    for row in rows:
        row["speedup"] = round(base / row["median_ms"], 3)
    report = {"machine": machine(), "model": args.model, "global_batch": 100, "meta_batch": 100,
              "estimator": "jvp", "device": args.device, "load_average": list(os.getloadavg()),
              "command": "python -m benchmarks.ddp_scaling " + " ".join(sys.argv[1:]), "results": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    for row in rows:
        print(f"world {row['world']}: {row['median_ms']:.1f} ms [{row['q1_ms']:.1f}, {row['q3_ms']:.1f}] "
              f"per global iteration, speed-up {row['speedup']:.2f}x")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], int(sys.argv[3]), sys.argv[4], Path(sys.argv[5]))
    else:
        main()
