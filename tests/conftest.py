"""Shared pytest fixtures."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from hub_server import HubSession, LocalHub


@pytest.fixture
def local_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[HubSession]:
    """A local Hub server with ``huggingface_hub`` (env and constants) pointed at it.

    Yields a :class:`hub_server.HubSession` (``.endpoint``, ``.token``, ``.server``,
    ``.cache_dir``, ``.go_offline()``); the server is stopped afterwards.
    """
    with LocalHub() as server:
        yield HubSession.connect(server, monkeypatch, tmp_path / "hf_home")
