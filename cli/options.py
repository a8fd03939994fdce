"""Options shared by the training commands."""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable
from typing import Any

import click

from weightzoo.methods.registry import method_names


def set_threads(threads: int | None) -> None:
    """``torch.set_num_threads(threads)`` (None: torch's default, one per core)."""
    if threads is not None:
        if threads < 1:
            raise click.BadParameter(f"{threads} (must be >= 1)", param_hint="--threads")
        import torch

        torch.set_num_threads(threads)


def run_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--device, --seed, --json, --no-progress (``--threads`` is per command)."""
    func = click.option("--device", default="auto", show_default=True,
                        help="cpu, cuda, cuda:N or auto (CUDA when present).")(func)
    func = click.option("--seed", type=int, default=None,
                        help="Seed for data split, bias, model init and batches.")(func)
    func = click.option("--json", "as_json", is_flag=True,
                        help="Print the result as JSON on stdout.")(func)
    func = click.option("--no-progress", is_flag=True, help="Hide the progress bars.")(func)
    return func


baseline_option = click.option(
    "--baseline", "baselines", multiple=True, type=click.Choice(method_names(baseline=True)),
    help="Also train this baseline on identical data, model, schedule and seed (repeatable).",
)


def command_line() -> str:
    """The invoking command line, for provenance."""
    return "weightzoo " + " ".join(shlex.quote(a) for a in sys.argv[1:])


threads_option = click.option(
    "--threads", type=int, default=None,
    help="CPU threads for torch (default: one per core). Small models train fastest with 1; "
         "results can differ in the last digits with the thread count.",
)

overwrite_option = click.option(
    "--overwrite", is_flag=True,
    help="Replace a previous run in OUT (default: refuse; --resume continues it).",
)


def echo_json(data: Any) -> None:
    from weightzoo.atomic import json_safe

    click.echo(json.dumps(json_safe(data), indent=2))


def format_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """A plain-text table: ``columns`` are (key, header); floats print as percentages."""
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{100 * value:.2f}"
        return "-" if value is None else str(value)

    table = [[h for _, h in columns]] + [[cell(r.get(k)) for k, _ in columns] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    lines = ["  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(row, widths,
                                                                                        strict=True)))
             for row in table]
    return "\n".join(lines)
