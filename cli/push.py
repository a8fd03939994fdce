"""``weightzoo push``: publish a weighter directory to the Hub or to a local zoo."""

from __future__ import annotations

import json
from pathlib import Path

import click

from weightzoo.artifact import hub, zoo

FILE_SCHEME = "file://"


@click.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.argument("repo_id")
@click.option("--revision", default=None, help="Hub branch to push to (created if missing).")
@click.option("--private", is_flag=True, help="Create the Hub repo as private.")
@click.option("--create-pr", is_flag=True, help="Open a Hub pull request instead of committing.")
@click.option("-m", "--message", default=None, help="Hub commit message.")
@click.option("--zoo", "zoo_path", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Publish into this local zoo (REPO_ID is then org/name).")
@click.option("--token", default=None, help="Hub token (default: $HF_TOKEN or `hf auth login`).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def push(directory: Path, repo_id: str, revision: str | None, private: bool, create_pr: bool,
         message: str | None, zoo_path: Path | None, token: str | None, as_json: bool) -> None:
    """Validate the weighter in DIRECTORY and publish it as REPO_ID.

    REPO_ID is a Hub repo ``org/name`` (prints the commit or PR URL), or a local zoo entry:
    ``org/name`` with ``--zoo PATH``, or ``file:///ZOO/org/name``; a zoo push adds the next
    version ``vNNNN`` (prints its path).  An invalid directory is refused before anything is
    created or uploaded.
    """
    if repo_id.startswith(FILE_SCHEME):
        if zoo_path is not None:
            raise click.UsageError("give either --zoo or a file:// target, not both")
        target = Path(repo_id.removeprefix(FILE_SCHEME))
        if len(target.parts) < 3:
            raise click.UsageError(f"{repo_id}: expected file:///ZOO/org/name")
        zoo_path, repo_id = target.parent.parent, f"{target.parent.name}/{target.name}"
    if zoo_path is not None:
        hub_only = [flag for flag, used in (
            ("--revision", revision), ("--private", private), ("--create-pr", create_pr),
            ("--message", message), ("--token", token),
        ) if used]
        if hub_only:
            raise click.UsageError(f"{', '.join(hub_only)}: Hub options, not for a local zoo")
        path = zoo.publish(directory, zoo_path, repo_id)
        report = {"target": "zoo", "path": str(path), "commit": path.name}
        click.echo(json.dumps(report) if as_json else str(path))
        return
    info = hub.push_to_hub(directory, repo_id, revision=revision, private=private,
                           create_pr=create_pr, message=message, token=token)
    url = str(info.pr_url) if create_pr and info.pr_url else info.commit_url
    click.echo(json.dumps({"target": "hub", "url": url, "commit": info.oid}) if as_json else url)
