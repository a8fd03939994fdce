"""Bad input and faults, in the form a user meets them (issue: the 153-case sweep): nothing a
user made is destroyed or poisoned, and every refusal is one line naming what is wrong."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from safetensors.torch import save_file

from weightzoo import atomic
from weightzoo.artifact import zoo
from weightzoo.artifact.format import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    WeighterFileError,
    load_artifact,
    save_artifact,
)
from weightzoo.cli.main import cli
from weightzoo.data.sources import load_dataset
from weightzoo.methods.frozen import FrozenWeighting
from weightzoo.training.engine import Schedule, Trainer, TrainingSet
from weightzoo.weighting.nets import CMWNet, MWNet
from weightzoo.weighting.weighted_loss import WeightedLoss

SHORT = ["--set", "schedule.epochs=1", "--set", "schedule.milestones=[]", "--set", "model.hidden=[16]",
         "--set", "schedule.warmup_epochs=0"]


def invoke(*args: object) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(result: Result, *needles: str) -> str:
    assert result.exit_code == 1, result.output
    message = result.stderr.strip()
    assert message.startswith("error: ") and "\n" not in message, message
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in message, message
    return message


def tree(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file()}


def tensors_of(weighter: CMWNet) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in weighter.state_dict().items()}


# ---------------------------------------------------------------------------------------------
# 1. an existing run is never replaced or restarted without being told


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "out"
    result = invoke("train", "digits-sym40-mwnet", "--out", out, "--no-progress", *SHORT)
    assert result.exit_code == 0, result.output
    return out


def test_train_refuses_an_existing_run_without_resume_or_overwrite(finished_run: Path) -> None:
    (finished_run / "weighter" / "my-notes.txt").write_text("mine")
    before = tree(finished_run)
    result = invoke("train", "digits-sym40-mwnet", "--out", finished_run, "--no-progress", *SHORT)
    one_line_error(result, "already holds a run", "--resume", "--overwrite")
    assert tree(finished_run) == before  # nothing deleted, nothing restarted


def test_resume_of_a_longer_run_with_fewer_epochs(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["train", "digits-sym40-mwnet", "--out", out, "--no-progress", *SHORT]
    assert invoke(*args, "--epochs", "2").exit_code == 0
    before = tree(out)
    one_line_error(invoke(*args, "--epochs", "1", "--resume"), "2 finished epochs", "epochs >= 2")
    assert tree(out) == before


def test_overwrite_replaces_a_run_on_request(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["train", "digits-sym40-mwnet", "--out", out, "--no-progress", *SHORT]
    assert invoke(*args).exit_code == 0
    (out / "weighter" / "stale.txt").write_text("old")
    assert invoke(*args, "--overwrite").exit_code == 0
    assert not (out / "weighter" / "stale.txt").exists()


# ---------------------------------------------------------------------------------------------
# 2. the artifact save: at every instant the name is the old or the new complete artifact


def _weighter(seed: int) -> CMWNet:
    torch.manual_seed(seed)
    return CMWNet(hidden=8)


FS_STEPS = ["mkdtemp", "save_file", "chmod", "exchange", "replace", "rmtree"]


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_a_fault_at_every_file_system_step_of_a_save(
    exchange: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = _weighter(0), _weighter(1)
    target = tmp_path / "w"
    save_artifact(old, target, curve=False)
    if not exchange:
        monkeypatch.setattr(atomic, "_EXCHANGE", None)
    calls: list[str] = []
    fail_at = {"n": -1}
    real = {"mkdtemp": atomic.tempfile.mkdtemp, "chmod": atomic.os.chmod,
            "exchange": atomic._EXCHANGE, "replace": atomic.os.replace, "rmtree": atomic.shutil.rmtree}

    def faulty(name: str, func):  # noqa: ANN202 - a wrapper of the same signature
        def call(*args, **kwargs):
            calls.append(name)
            if len(calls) - 1 == fail_at["n"]:
                raise OSError(f"injected fault at {name}")
            return func(*args, **kwargs)
        return call

    import weightzoo.artifact.format as fmt
    real_save_file = fmt.save_file
    monkeypatch.setattr(atomic.tempfile, "mkdtemp", faulty("mkdtemp", real["mkdtemp"]))
    monkeypatch.setattr(atomic.os, "chmod", faulty("chmod", real["chmod"]))
    monkeypatch.setattr(atomic.os, "replace", faulty("replace", real["replace"]))
    monkeypatch.setattr(atomic.shutil, "rmtree", faulty("rmtree", real["rmtree"]))
    monkeypatch.setattr(fmt, "save_file", faulty("save_file", real_save_file))
    if real["exchange"] is not None:
        monkeypatch.setattr(atomic, "_EXCHANGE", faulty("exchange", real["exchange"]))
    save_artifact(new, tmp_path / "probe", curve=False)  # count the steps of one save
    steps = len(calls)
    assert steps >= 4 and set(calls) <= set(FS_STEPS)
    for n in range(steps):
        save_artifact(old, target, curve=False)  # start from the old one every time
        calls.clear()
        fail_at["n"] = n
        try:
            save_artifact(new, target, curve=False)
        except OSError:
            pass
        fail_at["n"] = -1
        loaded = tensors_of(load_artifact(target))
        assert any(all(torch.equal(loaded[k], w.state_dict()[k]) for k in loaded) for w in (old, new)), n
        listed = invoke("list", tmp_path, "--json")
        names = sorted(r["name"] for r in json.loads(listed.stdout) if r["where"] == "dir")
        assert names == ["probe", "w"], (n, calls)


SAVER = textwrap.dedent("""
    import sys, torch
    from weightzoo.weighting.nets import CMWNet
    from weightzoo.artifact.format import save_artifact
    target = sys.argv[1]
    weighters = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        weighters.append(CMWNet(hidden=8))
    print("ready", flush=True)
    i = 0
    while True:
        save_artifact(weighters[i % 2], target, curve=False)
        i += 1
""")


def test_sigkill_during_saves_never_loses_the_artifact(tmp_path: Path) -> None:
    target = tmp_path / "w"
    seeds = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        seeds.append(tensors_of(CMWNet(hidden=8)))
    save_artifact(CMWNet(hidden=8), target, curve=False)
    rng = np.random.default_rng(0)
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(target)], stdout=subprocess.PIPE,
                                text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(float(rng.uniform(0.05, 0.4)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        loaded = tensors_of(load_artifact(target))  # the name resolves, complete
        assert any(all(torch.equal(loaded[k], s[k]) for k in loaded) for s in seeds)
        listed = invoke("list", tmp_path, "--json")
        assert [r["name"] for r in json.loads(listed.stdout) if r["where"] == "dir"] == ["w"]
        shown = invoke("show", target)
        assert shown.exit_code == 0, shown.output
    save_artifact(CMWNet(hidden=8), target, curve=False)  # a later save cleans the leftovers
    assert sorted(os.listdir(tmp_path)) == ["w"]


# ---------------------------------------------------------------------------------------------
# 3. a NaN input row never poisons the model in weightzoo's own training


def test_nan_input_row_in_training_stops_before_the_step() -> None:
    splits = load_dataset("digits", seed=0)
    x = splits.train_x[:100].clone()
    x[7] = float("nan")
    data = TrainingSet(x, splits.train_y[:100], splits.test_x[:20], splits.test_y[:20], 10)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(model, data, Schedule(epochs=1, batch_size=100), device="cpu", progress=False)
    with pytest.raises(FloatingPointError, match="1 non-finite per-sample losses .* no step was taken"):
        trainer.fit(FrozenWeighting(weighter=MWNet(hidden=8)))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# ---------------------------------------------------------------------------------------------
# 4. strict loading: missing config keys, non-finite tensors, absurd tensor counts


@pytest.mark.parametrize("key", ["normalization", "input_norm", "source_num_classes"])
def test_config_missing_a_key_is_refused(key: str, tmp_path: Path) -> None:
    directory = save_artifact(_weighter(0), tmp_path / "w", curve=False)
    for path in (directory / CONFIG_NAME,):
        data = json.loads(path.read_text())
        del data[key]
        path.write_text(json.dumps(data))
    with pytest.raises(WeighterFileError, match=f"config.json: config key\\(s\\) missing: {key}"):
        load_artifact(directory)
    one_line_error(invoke("show", directory), key)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_tensor_values_are_refused(value: float, tmp_path: Path) -> None:
    weighter = _weighter(0)
    directory = save_artifact(weighter, tmp_path / "w", curve=False)
    tensors = tensors_of(weighter)
    tensors["heads.bias"][1] = value
    config = (directory / CONFIG_NAME).read_text().strip()
    save_file(tensors, str(directory / WEIGHTS_NAME),
              metadata={"weightzoo_config": config, "weightzoo_schema": "1"})
    with pytest.raises(WeighterFileError, match="tensor heads.bias holds NaN or inf"):
        load_artifact(directory)


def test_a_hundred_thousand_extra_tensors_give_a_short_error(tmp_path: Path) -> None:
    weighter = _weighter(0)
    directory = save_artifact(weighter, tmp_path / "w", curve=False)
    tensors = tensors_of(weighter) | {f"extra{i:06d}": torch.zeros(1) for i in range(100_000)}
    config = (directory / CONFIG_NAME).read_text().strip()
    save_file(tensors, str(directory / WEIGHTS_NAME),
              metadata={"weightzoo_config": config, "weightzoo_schema": "1"})
    with pytest.raises(WeighterFileError) as info:
        load_artifact(directory)
    assert len(str(info.value)) < 400 and "... and 99995 more" in str(info.value)


# ---------------------------------------------------------------------------------------------
# 5. interrupts: nothing heavy is imported while a run finalises


def test_plotting_is_imported_before_training_starts(tmp_path: Path, monkeypatch) -> None:
    seen = {}
    real_fit = Trainer.fit

    def fit(self, method, resume=False):
        seen["pyplot"] = "matplotlib.pyplot" in sys.modules
        return real_fit(self, method, resume=resume)

    monkeypatch.delitem(sys.modules, "matplotlib.pyplot", raising=False)
    monkeypatch.setattr(Trainer, "fit", fit)
    result = invoke("train", "digits-sym40-mwnet", "--out", tmp_path / "r", "--no-progress", *SHORT)
    assert result.exit_code == 0 and seen["pyplot"]


# ---------------------------------------------------------------------------------------------
# 6. bad data: one line naming the file, the field and the value, before any work


def _npz(tmp_path: Path, **arrays: np.ndarray) -> Path:
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(("arrays", "needles"), [
    ({"X": np.zeros((0, 4)), "y": np.zeros(0, dtype=int)}, ["X is empty"]),
    ({"X": np.random.rand(3, 4), "y": np.array([0, 1, 0])}, ["3 samples leave an empty test split"]),
    ({"X": np.random.rand(3, 4), "y": np.array([0, 1, 10**9])}, ["y: label 1000000000 implies"]),
    ({"X": np.where(np.arange(40)[:, None] == 5, np.nan, np.ones((40, 4))), "y": np.arange(40) % 2},
     ["X has NaN or inf values in 1 rows (first: row 5)"]),
    ({"X": np.ones((4, 2)), "y": np.array([0.0, np.nan, 1.0, 1.0])}, ["y: labels must be integers", "nan"]),
    ({"X": np.ones((4, 2)), "y": np.array(["a", "b", "a", "b"])}, ["y: labels must be integers", "'a'"]),
])
def test_bad_npz_data_is_one_line_before_any_work(tmp_path: Path, arrays, needles) -> None:
    path = _npz(tmp_path, **arrays)
    out = tmp_path / "out"
    result = invoke("apply", "mwnet-fmnist-sym40", "--data", f"npz:{path}", "--epochs", "2",
                    "--out", out, "--no-progress")
    one_line_error(result, str(path), *needles)
    assert not out.exists()


@pytest.mark.parametrize(("labels", "needle"), [
    (torch.tensor([0, 1, 10**9]), "label 1000000000 implies 1000000001 classes for 3 labels"),
    (np.array([0.0, float("nan"), 1.0]), "labels must be integers >= 0, got nan at position 1"),
    (["cat", "dog"], "labels must be integers, got <U3 values such as 'cat'"),
])
def test_bad_labels_in_the_api(labels, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        WeightedLoss.from_pretrained("cmwnet-fmnist-asym40", labels=labels)


# ---------------------------------------------------------------------------------------------
# 7. --set values and their blame


def test_a_wrong_type_in_set_is_blamed_on_set(tmp_path: Path) -> None:
    result = invoke("train", "digits-sym40-mwnet", "--out", tmp_path / "r", "--set",
                    "schedule.epochs=many")
    one_line_error(result, "--set schedule.epochs=many", "wrong type")
    result = invoke("train", "digits-sym40-mwnet", "--out", tmp_path / "r", "--set", "meta.meta_lr=nan")
    one_line_error(result, "--set meta.meta_lr=nan", "finite")


# ---------------------------------------------------------------------------------------------
# 8. an unreachable Hub says so, naming the endpoint and the repo


def test_unreachable_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: refused
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    message = one_line_error(invoke("show", "nobody/no-weighter"))
    assert "could not reach the Hub at http://127.0.0.1:9 for nobody/no-weighter" in message
    directory = save_artifact(_weighter(0), tmp_path / "w")
    message = one_line_error(invoke("push", directory, "nobody/no-weighter", "--token", "x"))
    assert "could not reach the Hub at http://127.0.0.1:9 to push nobody/no-weighter" in message


# ---------------------------------------------------------------------------------------------
# 10. outputs are shared with the permissions the umask gives


def test_run_outputs_and_zoo_versions_get_umask_permissions(finished_run: Path, tmp_path: Path) -> None:
    mask = os.umask(0o022)
    os.umask(mask)
    files = [finished_run / n for n in ("run.json", "metrics.json", "checkpoint.pt", "curve.png")]
    files += list((finished_run / "weighter").glob("*"))
    for path in files:
        if path.name != "my-notes.txt":
            assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path
    assert stat.S_IMODE((finished_run / "weighter").stat().st_mode) == 0o777 & ~mask
    pushed = invoke("push", finished_run / "weighter", "lab/w", "--zoo", tmp_path / "zoo", "--json")
    version = Path(json.loads(pushed.stdout)["path"])
    assert stat.S_IMODE(version.stat().st_mode) == 0o777 & ~mask
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o666 & ~mask for p in version.iterdir())


# ---------------------------------------------------------------------------------------------
# 11. first-run friction


def test_push_refuses_a_one_part_zoo_name(tmp_path: Path) -> None:
    directory = save_artifact(_weighter(0), tmp_path / "w", curve=False)
    one_line_error(invoke("push", directory, "justaname", "--zoo", tmp_path / "zoo"), "org/name")
    assert not (tmp_path / "zoo" / "justaname").exists()
    with pytest.raises(ValueError, match="invalid zoo name"):
        zoo.publish(directory, tmp_path / "zoo", ".hidden/name")


def test_list_of_a_missing_zoo_is_an_error() -> None:
    result = invoke("list", "--zoo", "/nonexistent/zoo")
    assert result.exit_code == 2 and "/nonexistent/zoo is not a directory" in result.output


def test_run_json_records_one_family_for_mwnet(finished_run: Path) -> None:
    run = json.loads((finished_run / "run.json").read_text())
    assert run["recipe"]["method"]["num_families"] == 1
    assert run["environment"]["threads"] >= 1


def test_card_usage_names_no_recipe(finished_run: Path) -> None:
    card = (finished_run / "weighter" / "README.md").read_text()
    assert 'WeightedLoss.from_pretrained("NAME"' in card


def test_piping_into_head_prints_no_error() -> None:
    cmd = f"{sys.executable} -m weightzoo.cli.main recipes | head -c 10"
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert "Broken pipe" not in proc.stderr and "error" not in proc.stderr, proc.stderr


def test_threads_option_sets_torch_threads(tmp_path: Path) -> None:
    before = torch.get_num_threads()
    try:
        result = invoke("train", "digits-sym40-mwnet", "--out", tmp_path / "r", "--no-progress",
                        "--threads", "1", *SHORT, "--set", "method.name=ce")
        assert result.exit_code == 0, result.output
        assert json.loads((tmp_path / "r" / "run.json").read_text())["environment"]["threads"] == 1
        bad = invoke("train", "x", "--out", tmp_path / "q", "--threads", "0")
        assert bad.exit_code == 2 and "--threads: 0 (must be >= 1)" in bad.output
    finally:
        torch.set_num_threads(before)
