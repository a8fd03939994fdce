"""Classifier backbones: output shapes, parameter counts, functional_call compatibility."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from weightzoo.models import build_model, list_models

CASES = [
    ("mlp", (64,)),
    ("mlp", (1, 8, 8)),
    ("cnn", (1, 8, 8)),
    ("cnn", (1, 28, 28)),
    ("resnet32", (3, 32, 32)),
    ("resnet32", (1, 28, 28)),
    ("torchvision:resnet18", (1, 28, 28)),
]


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("name", "shape"), CASES)
def test_output_shape_and_functional_call(name: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = build_model(name, 7, shape)
    x = torch.randn(4, *shape)
    out = model(x)
    assert out.shape == (4, 7)
    # a look-ahead with shifted parameters changes the output but not the module itself
    params = {k: v.detach() + 0.01 for k, v in model.named_parameters()}
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    model.eval()
    shifted = functional_call(model, {**params, **buffers}, (x,))
    assert shifted.shape == (4, 7)
    assert not torch.allclose(shifted, model(x))
    assert torch.allclose(model(x), functional_call(model, dict(model.named_parameters()), (x,)))


def test_functional_call_gradients_flow_to_parameters() -> None:
    model = build_model("cnn", 3, (1, 8, 8))
    params = {k: v.detach().requires_grad_() for k, v in model.named_parameters()}
    loss = functional_call(model, params, (torch.randn(5, 1, 8, 8),)).sum()
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
    assert all(g is not None and g.shape == p.shape
               for g, p in zip(grads, params.values(), strict=True))


def test_parameter_counts() -> None:
    assert _n_params(build_model("resnet32", 10, (3, 32, 32))) == pytest.approx(0.46e6, rel=0.01)
    assert 80_000 < _n_params(build_model("cnn", 10, (1, 28, 28))) < 120_000
    assert _n_params(build_model("mlp", 10, (784,))) == 784 * 256 + 256 + 256 * 10 + 10


def test_mlp_hidden_sizes_and_cnn_width() -> None:
    mlp = build_model("mlp", 3, (10,), hidden=(8, 4))
    assert [m.out_features for m in mlp if isinstance(m, nn.Linear)] == [8, 4, 3]
    assert build_model("mlp", 3, (10,), hidden=())(torch.randn(2, 10)).shape == (2, 3)
    narrow = build_model("cnn", 10, (1, 28, 28), width=8)
    assert _n_params(narrow) < _n_params(build_model("cnn", 10, (1, 28, 28)))


def test_torchvision_channel_adapter() -> None:
    grey = build_model("torchvision:mobilenet_v3_small", 10, (1, 28, 28))
    rgb = build_model("torchvision:mobilenet_v3_small", 10, (3, 28, 28))
    assert isinstance(grey, nn.Sequential) and isinstance(grey[0], nn.Conv2d)
    assert (grey[0].in_channels, grey[0].out_channels, grey[0].kernel_size) == (1, 3, (1, 1))
    assert _n_params(grey) == _n_params(rgb) + 1 * 3 + 3  # learned 1x1 conv to 3 channels
    assert grey.training and grey(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_errors() -> None:
    with pytest.raises(ValueError, match="known: mlp, cnn, resnet32"):
        build_model("vit", 10, (3, 32, 32))
    with pytest.raises(ValueError, match="needs image inputs"):
        build_model("cnn", 10, (64,))
    with pytest.raises(ValueError, match="unknown torchvision model"):
        build_model("torchvision:not_a_model", 10, (3, 32, 32))
    with pytest.raises(ValueError, match="does not accept inputs"):
        build_model("torchvision:alexnet", 10, (1, 8, 8))
    with pytest.raises(ValueError, match="at least 4x4"):
        build_model("cnn", 10, (1, 3, 3))
    assert list_models() == ["mlp", "cnn", "resnet32", "torchvision:NAME", "python:MODULE:FUNC"]


def test_python_factory(tmp_path, monkeypatch) -> None:
    (tmp_path / "my_models.py").write_text(
        "import torch\n"
        "def make(num_classes, input_shape, hidden=8):\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, hidden),\n"
        "                               torch.nn.ReLU(), torch.nn.Linear(hidden, num_classes))\n"
        "def not_a_module(num_classes, input_shape):\n"
        "    return 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model = build_model("python:my_models:make", 10, (1, 8, 8), hidden=16)
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    assert model[1].out_features == 16
    with pytest.raises(ValueError, match="cannot import model factory"):
        build_model("python:my_models:missing", 10, (1, 8, 8))
    with pytest.raises(ValueError, match="not nn.Module"):
        build_model("python:my_models:not_a_module", 10, (1, 8, 8))
