"""The ``weightzoo`` command: a thin click layer over the library."""

from __future__ import annotations

import os
import sys

import click

from weightzoo.cli.apply import apply
from weightzoo.cli.demo import demo
from weightzoo.cli.inspect import list_cmd, plot, recommend, show
from weightzoo.cli.push import push
from weightzoo.cli.train import methods, recipes, train


class WeightzooGroup(click.Group):
    """Turns library errors into a one-line reason and exit code 1 (traceback with
    ``WEIGHTZOO_DEBUG=1``)."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            sys.exit(130)
        except BrokenPipeError:
            # the reader went away (`weightzoo list | head`): stop quietly, as Unix tools do
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(141)
        except Exception as err:  # noqa: BLE001 - the CLI's single error boundary
            if os.environ.get("WEIGHTZOO_DEBUG"):
                raise
            reason = " ".join(str(err).split()) or type(err).__name__
            click.echo(f"error: {reason}", err=True)
            sys.exit(1)


@click.group(cls=WeightzooGroup)
@click.version_option(package_name="weightzoo")
def cli() -> None:
    """Learned sample-weighting functions (MW-Net, CMW-Net) for robust training."""


for command in (demo, train, apply, push, show, plot, list_cmd, recommend, recipes, methods):
    cli.add_command(command)

if __name__ == "__main__":
    cli()
