"""``weightzoo show``, ``plot`` and ``list``: look at weighters."""

from __future__ import annotations

import json
from pathlib import Path

import click

from weightzoo import hub, zoo
from weightzoo.artifact import read_config
from weightzoo.plotting import family_names, plot_curves


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
    weighter = hub.load_pretrained_weighter(path)
    losses = weighter.loss_grid(points, num_classes)
    weights = weighter.curve(losses, num_classes)
    names = family_names(weighter.num_families)
    report = {
        "name": name, "path": str(path), "config": weighter.config.to_dict(),
        "curve": {"loss": [round(v, 6) for v in losses.tolist()],
                  "weights": {n: [round(v, 6) for v in weights[:, k].tolist()]
                              for k, n in enumerate(names)}},
    }
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    cfg = weighter.config
    click.echo(f"{name}  ({path})")
    click.echo(f"  kind={cfg.kind} families={cfg.num_families} hidden={cfg.hidden} "
               f"base_loss={cfg.base_loss} input_norm={cfg.input_norm} "
               f"normalization={cfg.normalization} source_classes={cfg.source_num_classes}")
    meta = cfg.metadata
    if meta.get("source"):
        src = meta["source"]
        click.echo(f"  source: {src.get('dataset', '?')} bias={src.get('bias', '?')}")
    if meta.get("families"):
        click.echo(f"  family centres (source): {meta['families'].get('centers')}")
    if meta.get("metrics"):
        click.echo(f"  metrics: {json.dumps(meta['metrics'])}")
    click.echo("  " + "loss".rjust(8) + "".join(n.rjust(16) for n in names))
    for i, loss in enumerate(losses.tolist()):
        click.echo("  " + f"{loss:8.3f}" + "".join(f"{w:16.3f}" for w in weights[i].tolist()))


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
    weighter = hub.load_pretrained_weighter(name, revision=revision)
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
                 if (p / "config.json").is_file()]
    root = zoo.zoo_root(zoo_path)
    if root is not None and root.is_dir():
        for entry in sorted(p for p in root.glob("*/*") if p.is_dir()):
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
            "families": cfg.num_families, "description": desc}
