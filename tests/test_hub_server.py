"""The local Hub server, exercised only through the real ``huggingface_hub`` client."""

import json
import threading
from pathlib import Path

import huggingface_hub
import pytest
import torch
from hub_server import HubSession
from huggingface_hub import (
    CommitOperationAdd,
    HfApi,
    ModelCard,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors.torch import save_file

REPO = "zoo-org/mwnet-test"
CARD = "---\nlibrary_name: weightzoo\ntags:\n- sample-weighting\n---\n# MW-Net weighter\n"


def _write_weighter(folder: Path, scale: float = 1.0) -> dict[str, bytes]:
    """A weighter-like directory (binary safetensors + config + card); returns its files."""
    folder.mkdir(parents=True, exist_ok=True)
    weight = torch.linspace(0, 1, 100).reshape(100, 1) * scale
    save_file({"fc1.weight": weight}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"schema_version": 1, "scale": scale}))
    (folder / "README.md").write_text(CARD)
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def _push(local_hub: HubSession, folder: Path, **kwargs: object) -> huggingface_hub.CommitInfo:
    api = HfApi(endpoint=local_hub.endpoint, token=local_hub.token)
    api.create_repo(REPO, private=False, exist_ok=True)
    return api.upload_folder(folder_path=folder, repo_id=REPO, commit_message="push", **kwargs)


def test_upload_then_download_by_branch_commit_and_snapshot(
    local_hub: HubSession, tmp_path: Path
) -> None:
    files = _write_weighter(tmp_path / "weighter")
    commit = _push(local_hub, tmp_path / "weighter")

    assert len(commit.oid) == 40 and int(commit.oid, 16) >= 0
    assert commit.commit_url == f"{local_hub.endpoint}/{REPO}/commit/{commit.oid}"
    assert local_hub.server.repo_files(REPO) == files

    api = HfApi(endpoint=local_hub.endpoint, token=local_hub.token)
    info = api.model_info(REPO)
    assert info.sha == commit.oid
    assert sorted(s.rfilename for s in info.siblings or []) == sorted(files)
    assert info.library_name == "weightzoo" and info.tags == ["sample-weighting"]
    assert api.repo_info(REPO, revision=commit.oid).sha == commit.oid
    assert sorted(api.list_repo_files(REPO)) == sorted(files)

    for revision in ("main", commit.oid):
        path = hf_hub_download(
            REPO, "model.safetensors", revision=revision, endpoint=local_hub.endpoint
        )
        assert Path(path).read_bytes() == files["model.safetensors"]
        assert commit.oid in path  # cached under snapshots/<commit>/

    before = len(local_hub.server.requests)
    hf_hub_download(REPO, "model.safetensors", revision=commit.oid, endpoint=local_hub.endpoint)
    assert len(local_hub.server.requests) == before  # commit-pinned: served from the cache

    snapshot = Path(snapshot_download(REPO, endpoint=local_hub.endpoint))
    assert {p.name: p.read_bytes() for p in snapshot.iterdir()} == files

    assert ModelCard.load(REPO).data.library_name == "weightzoo"  # default endpoint is patched


def test_module_level_functions_use_the_patched_endpoint(
    local_hub: HubSession, tmp_path: Path
) -> None:
    files = _write_weighter(tmp_path / "weighter")
    huggingface_hub.create_repo(REPO)
    commit = huggingface_hub.upload_folder(folder_path=tmp_path / "weighter", repo_id=REPO)
    assert HfApi().model_info(REPO).sha == commit.oid
    assert Path(hf_hub_download(REPO, "config.json")).read_bytes() == files["config.json"]


def test_second_commit_moves_main_and_old_commit_keeps_old_bytes(
    local_hub: HubSession, tmp_path: Path
) -> None:
    old = _write_weighter(tmp_path / "weighter", scale=1.0)
    first = _push(local_hub, tmp_path / "weighter")
    new = _write_weighter(tmp_path / "weighter", scale=2.0)
    second = _push(local_hub, tmp_path / "weighter")

    assert first.oid != second.oid
    assert [c.oid for c in local_hub.server.commits(REPO)][-2:] == [first.oid, second.oid]
    assert local_hub.server.commits(REPO)[-1].parent == first.oid
    api = HfApi(endpoint=local_hub.endpoint)
    assert api.model_info(REPO).sha == second.oid

    for revision, expected in ((first.oid, old), ("main", new), (second.oid, new)):
        path = hf_hub_download(REPO, "model.safetensors", revision=revision)
        assert Path(path).read_bytes() == expected["model.safetensors"]
    assert old["model.safetensors"] != new["model.safetensors"]

    unchanged = _push(local_hub, tmp_path / "weighter")  # nothing changed: no new commit
    assert unchanged.oid == second.oid


def test_pull_requests_and_branches(local_hub: HubSession, tmp_path: Path) -> None:
    _write_weighter(tmp_path / "weighter")
    main = _push(local_hub, tmp_path / "weighter").oid
    api = HfApi(endpoint=local_hub.endpoint, token=local_hub.token)

    pr = api.create_commit(
        REPO,
        operations=[CommitOperationAdd("notes.txt", b"proposed")],
        commit_message="proposal",
        create_pr=True,
    )
    assert pr.pr_revision == "refs/pr/1" and pr.pr_num == 1
    assert pr.pr_url == f"{local_hub.endpoint}/{REPO}/discussions/1"
    assert api.model_info(REPO).sha == main  # main untouched
    assert local_hub.server.refs(REPO)["refs/pr/1"] == pr.oid
    path = hf_hub_download(REPO, "notes.txt", revision="refs/pr/1")
    assert Path(path).read_bytes() == b"proposed"

    (tmp_path / "weighter" / "config.json").write_text("{}")
    folder_pr = _push(local_hub, tmp_path / "weighter", create_pr=True)
    assert folder_pr.pr_revision == "refs/pr/2"
    assert local_hub.server.repo_files(REPO, "refs/pr/2")["config.json"] == b"{}"
    refs = api.list_repo_refs(REPO, include_pull_requests=True)
    assert sorted(r.ref for r in refs.pull_requests or []) == ["refs/pr/1", "refs/pr/2"]

    with pytest.raises(RevisionNotFoundError):
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x", repo_id=REPO, revision="dev")
    api.create_branch(REPO, branch="dev")
    api.create_branch(REPO, branch="dev", exist_ok=True)
    dev = api.upload_file(path_or_fileobj=b"x", path_in_repo="x", repo_id=REPO, revision="dev")
    assert local_hub.server.refs(REPO)["dev"] == dev.oid
    assert "x" not in local_hub.server.repo_files(REPO)
    assert Path(hf_hub_download(REPO, "x", revision="dev")).read_bytes() == b"x"


def test_errors_map_to_client_exceptions(local_hub: HubSession, tmp_path: Path) -> None:
    api = HfApi(endpoint=local_hub.endpoint, token=local_hub.token)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("nobody/nothing")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("nobody/nothing", "config.json")

    _write_weighter(tmp_path / "weighter")
    _push(local_hub, tmp_path / "weighter")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "missing.bin")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "config.json", revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        api.model_info(REPO, revision="0" * 40)

    with pytest.raises(HfHubHTTPError) as excinfo:
        api.create_repo(REPO)
    assert excinfo.value.response.status_code == 409
    broken_card = tmp_path / "weighter" / "README.md"
    broken_card.write_bytes(b"---\n[broken\n---\n")
    with pytest.raises(ValueError, match="Invalid metadata in README.md"):  # client-side check
        api.upload_file(path_or_fileobj=broken_card, path_in_repo="README.md", repo_id=REPO)
    with pytest.raises(ValueError, match="Invalid metadata in README.md"):  # server-side check
        api.upload_folder(folder_path=tmp_path / "weighter", repo_id=REPO)

    anonymous = HfApi(endpoint=local_hub.endpoint, token=False)
    with pytest.raises(HfHubHTTPError) as excinfo:
        anonymous.create_repo("zoo-org/other")
    assert excinfo.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as excinfo:
        anonymous.upload_file(path_or_fileobj=b"x", path_in_repo="x", repo_id=REPO)
    assert excinfo.value.response.status_code == 401
    assert anonymous.model_info(REPO).sha  # public repo: reads need no token

    api.create_repo("zoo-org/secret", private=True)
    assert api.model_info("zoo-org/secret").private
    with pytest.raises(RepositoryNotFoundError):
        anonymous.model_info("zoo-org/secret")


def test_cached_files_load_offline_after_stop(local_hub: HubSession, tmp_path: Path) -> None:
    files = _write_weighter(tmp_path / "weighter")
    commit = _push(local_hub, tmp_path / "weighter")
    online = hf_hub_download(REPO, "model.safetensors")
    snapshot = snapshot_download(REPO)
    assert Path(online).is_relative_to(local_hub.cache_dir)

    local_hub.go_offline()
    assert not local_hub.server.running
    assert huggingface_hub.constants.is_offline_mode()

    assert hf_hub_download(REPO, "model.safetensors") == online
    assert hf_hub_download(REPO, "model.safetensors", revision=commit.oid) == online
    assert snapshot_download(REPO) == snapshot
    assert ModelCard.load(REPO).data.library_name == "weightzoo"
    with pytest.raises(LocalEntryNotFoundError):
        hf_hub_download(REPO, "never-downloaded.bin")
    assert Path(online).read_bytes() == files["model.safetensors"]


def test_local_files_only_without_offline_mode(local_hub: HubSession, tmp_path: Path) -> None:
    _write_weighter(tmp_path / "weighter")
    _push(local_hub, tmp_path / "weighter")
    online = hf_hub_download(REPO, "config.json")
    local_hub.server.stop()
    assert hf_hub_download(REPO, "config.json", local_files_only=True) == online


def test_server_stops_cleanly_and_keeps_state_across_restarts(local_hub: HubSession) -> None:
    hub = local_hub.server
    api = HfApi(endpoint=local_hub.endpoint, token=local_hub.token)
    api.create_repo(REPO)
    api.upload_file(path_or_fileobj=b"a", path_in_repo="a.txt", repo_id=REPO)
    hub.stop()
    hub.stop()  # idempotent
    server_threads = ("serve_forever", "process_request")
    assert not [t for t in threading.enumerate() if any(n in t.name for n in server_threads)]

    endpoint = hub.start()  # a new port; state survives
    assert endpoint != local_hub.endpoint
    assert HfApi(endpoint=endpoint).model_info(REPO).siblings[0].rfilename == "a.txt"  # type: ignore[index]
    assert hub.repo_files(REPO) == {"a.txt": b"a"}
