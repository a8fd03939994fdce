"""``weightzoo train``: meta-train a weighter (or a baseline) from a recipe."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from weightzoo.cli.options import (
    baseline_option,
    command_line,
    echo_json,
    format_table,
    overwrite_option,
    run_options,
    set_threads,
    threads_option,
)
from weightzoo.distributed import rank_and_world
from weightzoo.methods.registry import method_names, method_spec
from weightzoo.pipeline import train_with_baselines
from weightzoo.recipe import builtin_recipes, load_recipe

ACC_COLUMNS = [("method", "method"), ("test_acc", "test acc %"), ("best_test_acc", "best %"),
               ("head_acc", "head %"), ("medium_acc", "medium %"), ("tail_acc", "tail %")]


@click.command()
@click.argument("recipe", metavar="RECIPE|PATH")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Run directory (weighter/, curve.png, metrics.json, run.json, checkpoint.pt).")
@click.option("--epochs", type=int, default=None, help="Override schedule.epochs.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe value, e.g. --set meta.meta_lr=1e-4 (repeatable).")
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoint.pt.")
@overwrite_option
@baseline_option
@threads_option
@run_options
def train(recipe: str, out: Path, epochs: int | None, overrides: tuple[str, ...], resume: bool,
          overwrite: bool, baselines: tuple[str, ...], device: str, seed: int | None,
          as_json: bool, no_progress: bool, threads: int | None) -> None:
    """Meta-train a weighter (or train a baseline) as RECIPE describes.

    RECIPE is a shipped recipe name or a TOML file; shipped recipes:
    `weightzoo recipes`.
    """
    set_threads(threads)
    extra = [*overrides]
    if epochs is not None:
        extra.append(f"schedule.epochs={epochs}")
    if seed is not None:
        extra.append(f"seed={seed}")
    resolved = load_recipe(recipe, extra)
    results = train_with_baselines(
        resolved, out, tuple(b for b in baselines if b != resolved.method.name), device=device,
        resume=resume, overwrite=overwrite, progress=not no_progress, command=command_line(),
    )
    if rank_and_world()[0] != 0:  # under torchrun, rank 0 reports
        return
    if as_json:
        echo_json({"recipe": resolved.name, "out": str(out), "results": results})
        return
    rows = [{"method": m, **r} for m, r in results.items()]
    rows += [{**s, "method": f"{m} · {s['dataset']} {s['bias']}"}  # multi-source: each source's
             for m, r in results.items() for s in r.get("sources", [])]
    click.echo(f"{resolved.name}: {resolved.describe_data()}, "
               f"model {resolved.model['name']}, seed {resolved.seed}")
    click.echo(format_table(rows, ACC_COLUMNS))
    if (out / "weighter").is_dir():
        click.echo(f"weighter: {out / 'weighter'}  (curve: {out / 'curve.png'})")


@click.command("recipes")
@click.option("--json", "as_json", is_flag=True)
def recipes(as_json: bool) -> None:
    """List the shipped recipes."""
    rows = []
    for name, path in builtin_recipes().items():
        r = load_recipe(path)
        rows.append({"name": name, "method": r.method.name,
                     "dataset": " + ".join(d.dataset for d in r.data_sections),
                     "bias": " + ".join(d.bias for d in r.data_sections), "description": r.description})
    if as_json:
        echo_json(rows)
        return
    for row in rows:
        click.echo(f"{row['name']:36} {row['method']:8} {row['description']}")


@click.command("methods")
@click.option("--json", "as_json", is_flag=True)
def methods(as_json: bool) -> None:
    """List the registered training methods and their [method] keys."""
    rows = []
    for name in method_names():
        spec = method_spec(name)
        rows.append({"name": name, "description": spec.description, "baseline": spec.baseline,
                     "publishes": spec.publishes,
                     "keys": [f.name for f in dataclasses.fields(spec.config_class)]})
    if as_json:
        echo_json(rows)
        return
    for row in rows:
        click.echo(f"{row['name']:16} {row['description']}  [{', '.join(row['keys']) or '-'}]")
