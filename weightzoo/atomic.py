"""Atomic, permission-correct writes: the one helper every file weightzoo writes goes through.

- :func:`atomic_write` writes a file through a temporary sibling and ``os.replace``;
- :func:`write_json` is that for JSON (NaN / inf become ``null``);
- :func:`staging_dir` + :func:`swap_in` build a directory beside its target and swap it in
  so that the target name always resolves to the old or the new complete directory
  (``renameat2(RENAME_EXCHANGE)`` on Linux; elsewhere a two-rename swap that
  :func:`recover` completes after a crash);
- every file and directory gets the permissions the user's umask gives (0644 / 0755
  usually), not the 0600 / 0700 of ``tempfile``: outputs are meant to be shared.

Temporary names start with ``.`` and contain ``.tmp-`` or ``.old-``: listings skip them and
:func:`recover` removes stale ones.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

TMP_MARK, OLD_MARK = ".tmp-", ".old-"
_RENAME_EXCHANGE = 2


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def shared_mode(is_dir: bool) -> int:
    """The mode a plain ``open`` / ``mkdir`` would give under the current umask."""
    return (0o777 if is_dir else 0o666) & ~_umask()


def is_temporary(name: str) -> bool:
    """A staging or leftover name made by this module (never a real entry)."""
    return name.startswith(".") and (TMP_MARK in name or OLD_MARK in name)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result onto ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}{TMP_MARK}{os.getpid()}-", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, shared_mode(is_dir=False))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def json_safe(value: Any) -> Any:
    """JSON-ready copy: non-finite floats -> None, numpy scalars -> Python, keys -> str."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return json_safe(value.item())
    return value


def write_json(path: str | Path, data: Any) -> Path:
    """Atomic, indented JSON (NaN / inf become null)."""
    text = json.dumps(json_safe(data), indent=2) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


@contextlib.contextmanager
def staging_dir(target: str | Path) -> Iterator[Path]:
    """A fresh directory beside ``target`` (same filesystem), removed if the block fails."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover(target)
    staged = Path(tempfile.mkdtemp(prefix=f".{target.name}{TMP_MARK}{os.getpid()}-", dir=target.parent))
    os.chmod(staged, shared_mode(is_dir=True))
    try:
        yield staged
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise


def _renameat2() -> Callable[[str, str], bool] | None:
    """``exchange(a, b)`` through Linux's renameat2(RENAME_EXCHANGE), or None where missing."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return None
    libc = ctypes.CDLL(libc_name, use_errno=True)
    func = getattr(libc, "renameat2", None)
    if func is None:
        return None
    at_fdcwd = -100

    def exchange(a: str, b: str) -> bool:
        ok = func(at_fdcwd, a.encode(), at_fdcwd, b.encode(), _RENAME_EXCHANGE) == 0
        return ok

    return exchange


_EXCHANGE = _renameat2()


def swap_in(staged: Path, target: str | Path) -> Path:
    """Make ``staged`` the directory at ``target``; the previous one (if any) is removed.

    With renameat2 the swap is one atomic system call. Without it, the old directory is
    renamed to ``.NAME.old-*`` and the new one renamed in; a crash between the two leaves
    both, and :func:`recover` (run by every save and load) puts the old one back.
    """
    target = Path(target)
    for path in [staged, *staged.rglob("*")]:  # writers such as safetensors make 0600 files
        os.chmod(path, shared_mode(is_dir=path.is_dir()))
    if not target.exists():
        os.replace(staged, target)
        return target
    if _EXCHANGE is not None and _EXCHANGE(str(staged), str(target)):
        shutil.rmtree(staged, ignore_errors=True)  # now holds the old directory
        return target
    old = target.parent / f".{target.name}{OLD_MARK}{os.getpid()}"
    os.replace(target, old)
    try:
        os.replace(staged, target)
    except BaseException:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return target


def recover(target: str | Path) -> None:
    """Finish or undo an interrupted :func:`swap_in` of ``target`` and drop stale staging dirs.

    If ``target`` is missing but a ``.NAME.old-*`` copy exists, that copy is put back.
    Leftover ``.NAME.tmp-PID-*`` entries whose writer process is gone are removed (a live
    writer keeps its own).
    """
    target = Path(target)
    try:
        _recover(target)
    except OSError:  # e.g. a read-only install: nothing of ours to repair there
        pass


def _recover(target: Path) -> None:
    parent = target.parent
    if not parent.is_dir():
        return
    for entry in parent.iterdir():
        if not entry.name.startswith(f".{target.name}{OLD_MARK}"):
            continue
        if not target.exists():
            os.replace(entry, target)
        else:
            shutil.rmtree(entry, ignore_errors=True)
    for entry in parent.iterdir():
        if entry.name.startswith(f".{target.name}{TMP_MARK}") and _writer_gone(entry.name):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def _writer_gone(name: str) -> bool:
    """Whether the process that made staging entry ``name`` (``.X.tmp-PID-rand``) has exited."""
    pid_text = name.rsplit(TMP_MARK, 1)[1].split("-", 1)[0]
    if not pid_text.isdigit():
        return True
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
