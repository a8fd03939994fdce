"""Resolve weighter names and publish weighters (Hugging Face Hub or a local zoo).

Names resolve in this order (first match wins):
1. a built-in zoo name (a directory under the installed ``weightzoo/pretrained``);
2. a local weighter directory;
3. a local zoo entry ``org/name[@vN]`` under ``$WEIGHTZOO_ZOO`` (or ``file:///zoo/org/name``);
4. a Hub repo id ``org/name[@revision]`` through ``huggingface_hub`` (cache-aware;
   ``HF_HUB_OFFLINE=1`` and ``local_files_only=True`` load from the cache only).
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import httpx
from huggingface_hub import CommitInfo, HfApi, is_offline_mode, snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from weightzoo.artifact import zoo
from weightzoo.artifact.format import CONFIG_NAME, HUB_FILES, Artifact, validate_artifact


class WeighterNotFoundError(LookupError):
    """A weighter name that exists in none of the places searched."""


def builtin_root() -> Path:
    """Directory of the shipped weighters."""
    return Path(str(resources.files("weightzoo.pretrained")))


def builtin_names() -> list[str]:
    root = builtin_root()
    return sorted(p.name for p in root.iterdir() if (p / CONFIG_NAME).is_file())


def split_revision(name: str) -> tuple[str, str | None]:
    """``org/name@rev`` -> (``org/name``, ``rev``)."""
    base, sep, revision = name.partition("@")
    return base, (revision if sep else None)


def resolve(
    name: str | Path, *, revision: str | None = None, local_files_only: bool = False,
) -> Path:
    """The local directory holding weighter ``name`` (downloading from the Hub if needed)."""
    text = str(name)
    looked: list[str] = []
    builtin = builtin_root() / text
    if "/" not in text and (builtin / CONFIG_NAME).is_file():
        return builtin
    looked.append(f"built-in zoo ({', '.join(builtin_names()) or 'empty'})")
    if Path(text).expanduser().is_dir():
        return Path(text).expanduser()
    looked.append(f"local directory {text!r}")
    base, pinned = split_revision(text.removeprefix("file://"))
    revision = revision or pinned
    if text.startswith("file://"):
        path = Path(base)
        found = zoo.locate(path.parent.parent, f"{path.parent.name}/{path.name}", revision)
        if found:
            return found
        looked.append(f"zoo entry {text}")
    root = zoo.zoo_root()
    if root is not None:
        found = zoo.locate(root, base, revision)
        if found:
            return found
        looked.append(f"local zoo {root}")
    else:
        looked.append(f"local zoo (${zoo.ZOO_ENV} unset)")
    if base.count("/") == 1 and not text.startswith("file://"):
        try:
            return Path(snapshot_download(
                base, revision=revision, allow_patterns=list(HUB_FILES),
                local_files_only=local_files_only or is_offline_mode(),
            ))
        except HFValidationError:
            looked.append(f"Hub ({base!r} is not a valid repo id)")
        except LocalEntryNotFoundError as err:
            if local_files_only or is_offline_mode():
                looked.append(f"Hub cache for {base}@{revision or 'main'} (offline)")
            else:  # not cached, and the download itself failed: the Hub was not reachable
                looked.append(f"could not reach the Hub at {_endpoint()} for {base} "
                              f"({_first_line(err.__cause__ or err)})")
        except RepositoryNotFoundError:
            looked.append(f"Hub repo {base} (no such repo, or private without access)")
        except RevisionNotFoundError:
            looked.append(f"Hub repo {base} (no revision {revision!r})")
        except HfHubHTTPError as err:
            looked.append(f"Hub repo {base}@{revision or 'main'} ({_first_line(err)})")
        except (OSError, httpx.TransportError) as err:  # unreachable endpoint
            looked.append(f"could not reach the Hub at {_endpoint()} for {base} ({_first_line(err)})")
    raise WeighterNotFoundError(f"weighter {text!r} not found; looked in: " + "; ".join(looked))


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def load_pretrained(
    name: str | Path, *, revision: str | None = None, local_files_only: bool = False,
) -> Artifact:
    """Resolve ``name`` and load the artifact strictly (frozen, CPU, eval mode)."""
    return validate_artifact(resolve(name, revision=revision, local_files_only=local_files_only))


def push_to_hub(
    directory: str | Path, repo_id: str, *, revision: str | None = None, private: bool = False,
    create_pr: bool = False, message: str | None = None, token: str | None = None,
) -> CommitInfo:
    """Validate and upload a weighter directory in one commit (or PR).

    Returns the commit's ``CommitInfo`` (``.oid``, ``.commit_url``, ``.pr_url``).
    """
    validate_artifact(directory)
    api = HfApi(token=token)
    files = [name for name in HUB_FILES if (Path(directory) / name).is_file()]
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision and revision != "main" and not create_pr:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        return api.upload_folder(
            repo_id=repo_id, folder_path=str(directory), allow_patterns=files,
            revision=revision, create_pr=create_pr,
            commit_message=message or f"Upload weighter with weightzoo ({os.path.basename(directory)})",
        )
    except (OSError, httpx.TransportError) as err:
        raise ConnectionError(
            f"could not reach the Hub at {_endpoint()} to push {repo_id} ({_first_line(err)})"
        ) from None
