"""Publishing: ``weightzoo push`` to a local Hub server (real HTTP) and to a local zoo, then
loading back with ``WeightedLoss.from_pretrained`` through the real ``huggingface_hub`` client."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from hub_server import HubSession
from huggingface_hub import ModelCard

from weightzoo.artifact import hub, zoo
from weightzoo.artifact.card import card_tags
from weightzoo.artifact.format import CARD_NAME, CURVE_NAME, WEIGHTS_NAME, save_artifact
from weightzoo.cli.main import cli
from weightzoo.weighting.nets import CMWNet, MWNet
from weightzoo.weighting.weighted_loss import WeightedLoss

REPO = "zoo-org/cmwnet-digits"
METADATA = {"name": "cmwnet-digits", "source": {"dataset": "digits", "bias": "longtail-50+symmetric-0.2"}}
COUNTS = [400, 300, 200, 120, 80, 50, 30, 20, 12, 8]
LABELS = torch.repeat_interleave(torch.arange(len(COUNTS)), torch.tensor(COUNTS))


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No local zoo and a clean working directory unless a test sets one."""
    monkeypatch.delenv(zoo.ZOO_ENV, raising=False)
    monkeypatch.chdir(tmp_path)


def _weighter(seed: int) -> CMWNet:
    torch.manual_seed(seed)
    return CMWNet(metadata=METADATA)


def _save(tmp_path: Path, seed: int, curve: bool = False) -> tuple[Path, CMWNet]:
    weighter = _weighter(seed)
    return save_artifact(weighter, tmp_path / f"w{seed}", curve=curve), weighter


def _run(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def _push(*args: str | Path) -> dict[str, str]:
    result = _run("push", *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _same(loaded: CMWNet, expected: CMWNet) -> bool:
    ours, theirs = loaded.state_dict(), expected.state_dict()
    return ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def _load(name: str, **kwargs: object) -> CMWNet:
    return WeightedLoss.from_pretrained(name, labels=LABELS, **kwargs).weighter  # type: ignore[arg-type]


def test_push_then_from_pretrained_by_commit_and_main(local_hub: HubSession, tmp_path: Path) -> None:
    first_dir, first = _save(tmp_path, seed=0, curve=True)
    report = _push(first_dir, REPO)
    commit = report["commit"]
    assert report == {"target": "hub", "commit": commit,
                      "url": f"{local_hub.endpoint}/{REPO}/commit/{commit}"}
    files = local_hub.server.repo_files(REPO)
    assert sorted(files) == sorted(["config.json", CARD_NAME, WEIGHTS_NAME, CURVE_NAME])
    assert files[WEIGHTS_NAME] == (first_dir / WEIGHTS_NAME).read_bytes()

    assert _same(_load(f"{REPO}@{commit}"), first)
    requests = len(local_hub.server.requests)
    assert _same(_load(f"{REPO}@{commit}"), first)
    assert len(local_hub.server.requests) == requests  # a pinned commit comes from the cache
    assert _same(_load(f"{REPO}@main"), first)
    assert _same(_load(REPO), first)

    second_dir, second = _save(tmp_path, seed=1)
    plain = _run("push", second_dir, REPO, "-m", "second weighter")
    assert plain.exit_code == 0, plain.output
    second_commit = local_hub.server.refs(REPO)["main"]
    assert plain.stdout.strip() == f"{local_hub.endpoint}/{REPO}/commit/{second_commit}"
    assert local_hub.server.commits(REPO)[-1].message == "second weighter"
    assert not _same(second, first)
    assert _same(_load(f"{REPO}@main"), second)
    assert _same(_load(f"{REPO}@{commit}"), first)
    assert _same(_load(REPO, revision=commit), first)


def test_pushed_card_has_library_name_and_tags(local_hub: HubSession, tmp_path: Path) -> None:
    directory, weighter = _save(tmp_path, seed=0)
    _push(directory, REPO)
    card = ModelCard.load(REPO)
    assert card.data.library_name == "weightzoo"
    assert card.data.tags == card_tags(weighter)
    assert {"weightzoo", "cmwnet", "long-tail", "noisy-labels"} <= set(card.data.tags)


def test_offline_loads_from_cache(local_hub: HubSession, tmp_path: Path) -> None:
    directory, weighter = _save(tmp_path, seed=0)
    commit = _push(directory, REPO)["commit"]
    _load(f"{REPO}@{commit}")
    _load(f"{REPO}@main")
    never_downloaded = _push(_save(tmp_path, seed=1)[0], REPO, "--revision", "dev")["commit"]

    local_hub.go_offline()
    assert _same(_load(f"{REPO}@{commit}"), weighter)
    assert _same(_load(f"{REPO}@main"), weighter)
    assert _same(_load(REPO, local_files_only=True), weighter)
    assert _same(_load(f"{REPO}@{commit}", local_files_only=True), weighter)
    for missing in ("dev", never_downloaded):
        with pytest.raises(hub.WeighterNotFoundError, match=f"Hub cache for {REPO}@{missing} \\(offline\\)"):
            hub.resolve(f"{REPO}@{missing}")

    # A fresh process: HF_HUB_OFFLINE=1 (and the cache location) come from the environment only.
    shown = subprocess.run(
        [sys.executable, "-m", "weightzoo.cli.main", "show", f"{REPO}@main", "--json"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert shown.returncode == 0, shown.stderr
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert json.loads(shown.stdout)["path"].endswith(f"snapshots/{commit}")


def test_server_down_without_offline_mode_is_not_found(local_hub: HubSession, tmp_path: Path) -> None:
    directory, _ = _save(tmp_path, seed=0)
    commit = _push(directory, REPO)["commit"]
    local_hub.server.stop()
    for name in (REPO, f"{REPO}@{commit}"):
        with pytest.raises(hub.WeighterNotFoundError, match=f"weighter '{name}' not found"):
            hub.resolve(name)


def test_create_pr_and_branch(local_hub: HubSession, tmp_path: Path) -> None:
    main_dir, main = _save(tmp_path, seed=0)
    _push(main_dir, REPO)
    main_commit = local_hub.server.refs(REPO)["main"]

    pr_dir, pr = _save(tmp_path, seed=1)
    result = _run("push", pr_dir, REPO, "--create-pr")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"{local_hub.endpoint}/{REPO}/discussions/1"
    refs = local_hub.server.refs(REPO)
    assert refs["main"] == main_commit
    assert local_hub.server.repo_files(REPO, "refs/pr/1")[WEIGHTS_NAME] == (
        pr_dir / WEIGHTS_NAME).read_bytes()
    assert _same(_load(f"{REPO}@refs/pr/1"), pr)

    dev_dir, dev = _save(tmp_path, seed=2)
    report = _push(dev_dir, REPO, "--revision", "dev")
    assert local_hub.server.refs(REPO)["dev"] == report["commit"]
    assert local_hub.server.refs(REPO)["main"] == main_commit
    assert _same(_load(f"{REPO}@dev"), dev)
    assert _same(_load(REPO), main)


def test_push_private_repo_needs_the_token(local_hub: HubSession, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    directory, weighter = _save(tmp_path, seed=0)
    monkeypatch.delenv("HF_TOKEN")
    denied = _run("push", directory, REPO, "--token", "wrong")
    assert denied.exit_code == 1 and denied.stderr.startswith("error: ")
    assert len(denied.stderr.strip().splitlines()) == 1
    _push(directory, REPO, "--private", "--token", local_hub.token)
    monkeypatch.setenv("HF_TOKEN", local_hub.token)
    assert _same(_load(REPO), weighter)


@pytest.mark.parametrize("damage", ["missing-card", "corrupt-weights", "not-a-directory"])
def test_invalid_directory_is_refused_before_upload(
    local_hub: HubSession, tmp_path: Path, damage: str
) -> None:
    directory, _ = _save(tmp_path, seed=0)
    if damage == "missing-card":
        (directory / CARD_NAME).unlink()
        reason = f"{directory / CARD_NAME}: missing"
    elif damage == "corrupt-weights":
        (directory / WEIGHTS_NAME).write_bytes((directory / WEIGHTS_NAME).read_bytes()[:100])
        reason = f"{directory / WEIGHTS_NAME}: not a readable safetensors file"
    else:
        directory = tmp_path / "nowhere"
        reason = f"{directory}: not a directory"
    for target in (REPO, f"file://{tmp_path}/zoo/org/name"):
        result = _run("push", directory, target)
        assert result.exit_code == 1
        assert result.stderr.startswith(f"error: {reason}")
        assert len(result.stderr.strip().splitlines()) == 1
    assert local_hub.server.requests == []  # refused before any request: no repo, no commit
    assert not (tmp_path / "zoo").exists()


def test_local_zoo_push_versions_and_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "zoo"
    first_dir, first = _save(tmp_path, seed=0)
    second_dir, second = _save(tmp_path, seed=1)
    result = _run("push", first_dir, "lab/cmwnet", "--zoo", root)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(root / "lab" / "cmwnet" / "v0001")
    assert _push(second_dir, "lab/cmwnet", "--zoo", root) == {
        "target": "zoo", "path": str(root / "lab" / "cmwnet" / "v0002"), "commit": "v0002"}
    assert zoo.versions(root, "lab/cmwnet") == [1, 2]

    monkeypatch.setenv(zoo.ZOO_ENV, str(root))
    assert _same(_load("lab/cmwnet"), second)
    assert _same(_load("lab/cmwnet@v1"), first)
    assert _same(_load("lab/cmwnet", revision="v0002"), second)

    third_dir, third = _save(tmp_path, seed=2)
    assert _push(third_dir, f"file://{root}/lab/cmwnet")["path"] == str(root / "lab/cmwnet/v0003")
    monkeypatch.delenv(zoo.ZOO_ENV)
    assert _same(_load(f"file://{root}/lab/cmwnet"), third)
    assert _same(_load(f"file://{root}/lab/cmwnet@v2"), second)

    listing = _run("list", "--zoo", root)
    assert listing.exit_code == 0, listing.output
    assert [line.split()[:2] for line in listing.stdout.splitlines() if line.startswith("zoo")] == [
        ["zoo", f"lab/cmwnet@v{v}"] for v in (1, 2, 3)]


def test_zoo_push_rejects_hub_options(tmp_path: Path) -> None:
    directory, _ = _save(tmp_path, seed=0)
    result = _run("push", directory, "lab/x", "--zoo", tmp_path / "zoo", "--create-pr", "--revision", "b")
    assert result.exit_code == 2 and "--revision, --create-pr: Hub options" in result.stderr
    both = _run("push", directory, f"file://{tmp_path}/zoo/lab/x", "--zoo", tmp_path / "zoo")
    assert both.exit_code == 2 and "either --zoo or a file:// target" in both.stderr
    bad = _run("push", directory, "lab/../x", "--zoo", tmp_path / "zoo")
    assert bad.exit_code == 1 and "invalid zoo name 'lab/../x'" in bad.stderr
    assert not (tmp_path / "zoo").exists() or zoo.versions(tmp_path / "zoo", "lab/x") == []


def test_not_found_lists_every_place(local_hub: HubSession, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(zoo.ZOO_ENV, str(tmp_path / "zoo"))
    with pytest.raises(hub.WeighterNotFoundError) as info:
        hub.resolve("nobody/nothing")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("weighter 'nobody/nothing' not found; looked in: built-in zoo (")
    assert "local directory 'nobody/nothing'" in message
    assert f"local zoo {tmp_path / 'zoo'}" in message
    assert "Hub repo nobody/nothing (no such repo, or private without access)" in message

    _push(_save(tmp_path, seed=0)[0], REPO)
    with pytest.raises(hub.WeighterNotFoundError, match=f"Hub repo {REPO} \\(no revision 'v9'\\)"):
        hub.resolve(f"{REPO}@v9")

    with pytest.raises(hub.WeighterNotFoundError, match=r"Hub \('~/no-such-dir' is not a valid repo id\)"):
        hub.resolve("~/no-such-dir")

    result = _run("show", "nobody/nothing")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: weighter 'nobody/nothing' not found; looked in:")
    assert len(result.stderr.strip().splitlines()) == 1


def test_hub_convention_on_the_weighter_itself(local_hub: HubSession, tmp_path: Path) -> None:
    """``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` as PyTorchModelHubMixin gives them."""
    weighter = _weighter(seed=3)
    directory = weighter.save_pretrained(tmp_path / "mine")
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        ["config.json", CARD_NAME, WEIGHTS_NAME, CURVE_NAME])
    assert _same(CMWNet.from_pretrained(directory), weighter)
    info = weighter.push_to_hub(REPO, message="from the object")
    assert local_hub.server.commits(REPO)[-1].message == "from the object"
    loaded = CMWNet.from_pretrained(f"{REPO}@{info.oid}")
    assert type(loaded) is CMWNet and _same(loaded, weighter) and not loaded.training
    with pytest.raises(TypeError, match="not a MWNet"):
        MWNet.from_pretrained(directory)  # a CMW-Net artifact is not an MW-Net
