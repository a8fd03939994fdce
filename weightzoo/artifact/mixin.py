"""The Hub convention on the artifact objects themselves (as ``PyTorchModelHubMixin`` gives a
model): ``obj.save_pretrained(dir)``, ``Cls.from_pretrained(name)``, ``obj.push_to_hub(repo)``.

The methods delegate to :mod:`weightzoo.artifact.format` (the on-disk format) and
:mod:`weightzoo.artifact.hub` (name resolution, upload); they are imported on call so that
the artifact classes can inherit this mixin without an import cycle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T", bound="ArtifactMixin")


class ArtifactMixin:
    """``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` for weightzoo artifacts."""

    def save_pretrained(self, save_directory: str | Path, *, curve: bool = True) -> Path:
        """Write the artifact (safetensors + config.json + model card + curve) atomically."""
        from weightzoo.artifact.format import save_artifact

        return save_artifact(self, save_directory, curve=curve)  # type: ignore[arg-type]

    @classmethod
    def from_pretrained(
        cls: type[T], name_or_path: str | Path, *, revision: str | None = None,
        local_files_only: bool = False,
    ) -> T:
        """Load strictly by zoo name, local directory, local zoo entry or Hub ``org/repo[@rev]``."""
        from weightzoo.artifact.hub import load_pretrained

        loaded = load_pretrained(name_or_path, revision=revision, local_files_only=local_files_only)
        if not isinstance(loaded, cls):
            raise TypeError(
                f"{name_or_path}: holds a {type(loaded).__name__}, not a {cls.__name__}"
            )
        return loaded

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> Any:
        """Save to a temporary directory and upload it in one commit; returns the CommitInfo.

        kwargs: ``revision``, ``private``, ``create_pr``, ``message``, ``token``.
        """
        import tempfile

        from weightzoo.artifact.hub import push_to_hub

        with tempfile.TemporaryDirectory() as tmp:
            directory = self.save_pretrained(Path(tmp) / "artifact")
            return push_to_hub(directory, repo_id, **kwargs)
