"""``weightzoo show / plot / list`` through click's CliRunner."""

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from PIL import Image

from weightzoo.artifact import zoo
from weightzoo.artifact.format import save_artifact
from weightzoo.cli.main import cli
from weightzoo.weighting.nets import CMWNet

METADATA = {
    "source": {"dataset": "digits", "bias": "longtail-50"},
    "families": {"centers": [8.0, 60.0, 170.0]},
    "metrics": {"test_acc": 0.9},
}


@pytest.fixture
def weighters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory holding one saved weighter ``w`` and one non-weighter folder."""
    monkeypatch.delenv(zoo.ZOO_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    save_artifact(CMWNet(metadata=METADATA), tmp_path / "dir" / "w", curve=False)
    (tmp_path / "dir" / "not-a-weighter").mkdir()
    return tmp_path / "dir"


def _run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def test_show_text(weighters: Path) -> None:
    result = _run("show", str(weighters / "w"), "--points", "4")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "kind=cmwnet" in out and "num_families=3" in out and "normalization=sum" in out
    assert "source: digits bias=longtail-50" in out
    assert "family centres (source): [8.0, 60.0, 170.0]" in out
    assert "small classes" in out and "large classes" in out
    assert len([line for line in out.splitlines() if line.strip()[:1].isdigit()]) == 4


def test_show_json(weighters: Path) -> None:
    result = _run("show", str(weighters / "w"), "--json", "--points", "5", "--num-classes", "100")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["config"]["kind"] == "cmwnet" and report["config"]["metadata"] == METADATA
    curve = report["curve"]
    assert len(curve["loss"]) == 5
    assert curve["loss"][-1] == pytest.approx(3 * torch.log(torch.tensor(100.0)).item(), abs=1e-5)
    assert list(curve["weights"]) == ["small classes", "medium classes", "large classes"]
    assert all(len(ws) == 5 and all(0 <= w <= 1 for w in ws) for ws in curve["weights"].values())


@pytest.mark.parametrize(("width", "height"), [(320, 200), (333, 211)])
def test_plot_writes_png_of_requested_size(weighters: Path, width: int, height: int) -> None:
    out = weighters.parent / "x.png"
    result = _run("plot", str(weighters / "w"), "-o", str(out), "--width", str(width),
                  "--height", str(height))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    with Image.open(out) as image:
        assert image.format == "PNG"
        assert image.size == (width, height)
        image.load()  # decodes fully


def test_list_dir_json(weighters: Path) -> None:
    result = _run("list", str(weighters), "--json")
    assert result.exit_code == 0, result.output
    rows = [row for row in json.loads(result.stdout) if row["where"] == "dir"]
    assert rows == [{
        "where": "dir", "name": "w", "path": str(weighters / "w"), "kind": "cmwnet",
        "families": 3, "description": "digits / longtail-50",
    }]


def test_list_includes_local_zoo(weighters: Path) -> None:
    root = weighters.parent / "zoo"
    zoo.publish(weighters / "w", root, "lab/cmwnet")
    result = _run("list", "--zoo", str(root))
    assert result.exit_code == 0, result.output
    assert "lab/cmwnet@v1" in result.stdout


@pytest.mark.parametrize("command", ["show", "plot"])
def test_bad_name_is_one_line_error(weighters: Path, command: str) -> None:
    result = _run(command, "no-such-weighter")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: weighter 'no-such-weighter' not found; looked in:")
    assert result.stdout == ""


def test_corrupt_weighter_is_one_line_error(weighters: Path) -> None:
    (weighters / "w" / "model.safetensors").write_bytes(b"not safetensors")
    result = _run("show", str(weighters / "w"))
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "model.safetensors" in lines[0]
