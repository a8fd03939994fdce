"""Local zoo: a versioned directory of weighters on a (shared) filesystem.

Layout: ``ZOO/<org>/<name>/v0001/`` (a weighter directory), ``v0002/``, ...  A push adds
a new version; an existing version is never overwritten.  ``org/name`` loads the latest
version, ``org/name@v2`` (or ``@2``) a pinned one.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from weightzoo.artifact.format import validate_artifact
from weightzoo.atomic import is_temporary, shared_mode, staging_dir

ZOO_ENV = "WEIGHTZOO_ZOO"
_VERSION = re.compile(r"^v(\d+)$")


def zoo_root(path: str | Path | None = None) -> Path | None:
    """The zoo directory: ``path`` if given, else ``$WEIGHTZOO_ZOO``, else ``None``."""
    if path is not None:
        return Path(path)
    env = os.environ.get(ZOO_ENV)
    return Path(env) if env else None


def _check_name(name: str) -> None:
    parts = name.split("/")
    if len(parts) != 2 or any(
        not p or p.startswith(".") or not re.match(r"^[\w.-]+$", p) for p in parts
    ):
        raise ValueError(f"invalid zoo name {name!r}: use 'org/name' with letters, digits, . _ -")


def versions(root: Path, name: str) -> list[int]:
    """Published version numbers of ``name``, ascending."""
    entry = root / name
    if not entry.is_dir():
        return []
    found = (_VERSION.match(p.name) for p in entry.iterdir() if p.is_dir() and not is_temporary(p.name))
    return sorted(int(m.group(1)) for m in found if m)


def publish(directory: str | Path, root: str | Path, name: str) -> Path:
    """Copy a valid weighter directory into the zoo as the next version; returns its path."""
    _check_name(name)
    validate_artifact(directory)
    entry = Path(root) / name
    with staging_dir(entry / "push") as staged:
        shutil.copytree(directory, staged / "w")
        for path in [staged / "w", *(staged / "w").rglob("*")]:  # shared, whatever the source had
            path.chmod(shared_mode(path.is_dir()))
        try:
            while True:  # claim the next free version; os.rename fails if another push took it
                number = (versions(Path(root), name) or [0])[-1] + 1
                target = entry / f"v{number:04d}"
                try:
                    os.rename(staged / "w", target)
                    return target
                except OSError:
                    if not target.exists():
                        raise
        finally:
            shutil.rmtree(staged, ignore_errors=True)


def locate(root: Path, name: str, version: str | None = None) -> Path | None:
    """Directory of ``name`` at ``version`` (``v3``, ``3``; default latest) or ``None``."""
    try:
        _check_name(name)
    except ValueError:
        return None
    available = versions(root, name)
    if not available:
        return None
    if version is None:
        return root / name / f"v{available[-1]:04d}"
    number = int(version.lstrip("v")) if version.lstrip("v").isdigit() else None
    if number not in available:
        return None
    return root / name / f"v{number:04d}"
