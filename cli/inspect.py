"""``weightzoo show``, ``plot``, ``list`` and ``recommend``: look at weighters, and pick one."""

from __future__ import annotations

import json
from pathlib import Path

import click

from weightzoo.artifact import hub, zoo
from weightzoo.artifact.curve import curve_table, plot_curves
from weightzoo.artifact.format import CONFIG_NAME, read_config
from weightzoo.artifact.recommend import RULE
from weightzoo.artifact.recommend import recommend as recommend_entry
from weightzoo.atomic import is_temporary


@click.command()
@click.argument("name")
@click.option("--revision", default=None, help="Hub revision (or use NAME@REV).")
@click.option("--num-classes", type=int, default=None,
              help="Evaluate the curve for data with this many classes (default: source).")
@click.option("--points", type=int, default=9, show_default=True, help="Loss grid size.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def show(name: str, revision: str | None, num_classes: int | None, points: int,
         as_json: bool) -> None:
    """Config, families and the weight at a grid of losses per family."""
    path = hub.resolve(name, revision=revision)
    weighter = hub.load_pretrained(path)
    table = curve_table(weighter, points, num_classes)
    report = {"name": name, "path": str(path), "config": weighter.config.to_dict(),
              "curve": table.to_dict()}
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    cfg = weighter.config
    click.echo(f"{name}  ({path})")
    click.echo("  " + " ".join(f"{k}={v}" for k, v in cfg.to_dict().items() if k != "metadata"))
    if hasattr(weighter, "hyperparameters"):
        click.echo("  learned: " + " ".join(f"{k}={v:.4g}" for k, v in weighter.hyperparameters().items()))
    meta = cfg.metadata
    if meta.get("source"):
        src = meta["source"]
        click.echo(f"  source: {src.get('dataset', '?')} bias={src.get('bias', '?')}")
    if meta.get("families"):
        click.echo(f"  family centres (source): {meta['families'].get('centers')}")
    metrics = dict(meta.get("metrics") or {})
    sources = metrics.pop("sources", [])  # multi-source meta-training: one line per source
    if metrics:
        click.echo(f"  metrics{' (mean over sources)' if sources else ''}: {json.dumps(metrics)}")
    for source in sources:
        click.echo(f"  source {source.get('dataset', '?')} {source.get('bias', '?')}: test acc "
                   f"{100 * source.get('test_acc', float('nan')):.2f}%")
    for line in table.text().splitlines():
        click.echo("  " + line)


@click.command()
@click.argument("name")
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("curve.png"), show_default=True, help="PNG to write.")
@click.option("--revision", default=None)
@click.option("--num-classes", type=int, default=None)
@click.option("--width", type=int, default=640, show_default=True)
@click.option("--height", type=int, default=480, show_default=True)
def plot(name: str, out: Path, revision: str | None, num_classes: int | None,
         width: int, height: int) -> None:
    """Plot weight vs loss, one curve per family, to a PNG."""
    weighter = hub.load_pretrained(name, revision=revision)
    plot_curves(weighter, out, num_classes, width_px=width, height_px=height)
    click.echo(str(out))


@click.command("list")
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--zoo", "zoo_path", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="A local zoo to list (default: $WEIGHTZOO_ZOO).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_cmd(directory: Path | None, zoo_path: Path | None, as_json: bool) -> None:
    """The built-in zoo, and the weighters in DIRECTORY and in a local zoo."""
    rows = [_row("builtin", n, hub.builtin_root() / n) for n in hub.builtin_names()]
    if directory is not None:
        if not directory.is_dir():
            raise click.BadParameter(f"{directory} is not a directory")
        rows += [_row("dir", p.name, p) for p in sorted(directory.iterdir())
                 if not is_temporary(p.name) and (p / CONFIG_NAME).is_file()]
    root = zoo.zoo_root(zoo_path)
    if root is not None and not root.is_dir():
        raise click.BadParameter(f"{root} is not a directory", param_hint="--zoo")
    if root is not None:
        for entry in sorted(p for p in root.glob("*/*") if p.is_dir() and not is_temporary(p.name)):
            name = f"{entry.parent.name}/{entry.name}"
            for v in zoo.versions(root, name):
                rows.append(_row("zoo", f"{name}@v{v}", entry / f"v{v:04d}"))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no weighters found")
    for r in rows:
        click.echo(f"{r['where']:8} {r['name']:36} {r['kind']:7} {r['description']}")


def _row(where: str, name: str, path: Path) -> dict:
    try:
        cfg = read_config(path)
    except ValueError as err:
        return {"where": where, "name": name, "path": str(path), "kind": "invalid",
                "description": str(err)}
    meta = cfg.metadata
    desc = meta.get("description") or (
        f"{meta.get('source', {}).get('dataset', '?')} / {meta.get('source', {}).get('bias', '?')}"
    )
    return {"where": where, "name": name, "path": str(path), "kind": cfg.kind,
            "families": getattr(cfg, "num_families", None), "description": desc}


@click.command()
@click.argument("bias", type=click.Choice(list(RULE)))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def recommend(bias: str, as_json: bool) -> None:
    """The shipped entry for a declared BIAS (the zoo's rule), and where it was measured
    against CE and the best robust loss."""
    pick = recommend_entry(bias)
    if as_json:
        click.echo(json.dumps(pick.to_dict(), indent=2))
        return
    load = "LearnedRobustLoss" if pick.kind == "learned loss" else "WeightedLoss"
    deferred = pick.rebalance == "deferred"
    click.echo(f"{bias} -> {pick.entry} ({pick.kind}; rule {pick.rule}): {load}.from_pretrained"
               f"({pick.entry!r}, ...) or `weightzoo apply {pick.entry}"
               f"{' --rebalance deferred' if deferred else ''} ...`")
    if deferred:
        how = ("call crit.rebalance() there" if pick.kind == "weighter" else
               "multiply its per-sample loss by weightzoo.class_balanced_weights(your counts)[y] from there")
        click.echo(f"  with deferred re-balancing from your first lr drop: {how}")
    click.echo(f"measured frozen on {len(pick.cells)} unseen targets (test acc %, mean over each cell's seeds"
               + ("; CE and the robust loss trained without re-balancing, drw-*: with it" if deferred else "")
               + "):")
    for c in pick.cells:
        over_ce, over_robust = 100 * (c.acc - c.ce), 100 * (c.acc - c.best_robust_acc)
        drw = "" if c.best_drw is None else f"   {c.best_drw} {100 * c.best_drw_acc:6.2f} " \
            f"({100 * (c.acc - c.best_drw_acc):+.2f})"
        click.echo(f"  {c.cell:33} {c.seeds:2} seeds {100 * c.acc:6.2f}   CE {100 * c.ce:6.2f} "
                   f"({over_ce:+.2f})   {c.best_robust} {100 * c.best_robust_acc:6.2f} "
                   f"({over_robust:+.2f}){drw}")
    click.echo(f"beats CE in {pick.beats_ce} of {len(pick.cells)}; matches or beats the best robust loss "
               f"in {pick.ahead_of_robust} of {len(pick.cells)}")
    if loss := pick.stronger_robust_loss:
        plain = (f"`{loss.removeprefix('drw-')}` loss with deferred re-balancing" if loss.startswith("drw-")
                 else f"plain `{loss}` loss")
        click.echo(f"behind the best robust loss in most cells: the {plain} (weightzoo.per_sample_loss, "
                   "or a --baseline) is as strong or stronger here")
