"""The class activation map inside the network, and the opacities ``cxr data synth`` records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cxr.train.models import (
    HeatmapUnsupportedError,
    build_model,
    cam_weights,
    feature_map,
    head_logits,
)
from cxr.train.synth import read_opacities, synth_case, synth_image, write_synthetic_dataset


@pytest.mark.parametrize("arch", ["resnet18", "efficientnet_lite0", "densenet121"])
def test_the_map_decomposes_the_logit_and_the_probabilities_are_unchanged(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(arch, 2).eval()
    images = torch.randint(0, 256, (3, 1, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        probs, heatmap = model.probs_and_heatmap(images)
        features = feature_map(model.backbone, images.float() * model.scale - model.shift)
        logits = head_logits(model.backbone, features)
        raw = torch.einsum("nkhw,k->nhw", features, cam_weights(model.backbone))
        head = [m for m in model.backbone.modules() if isinstance(m, torch.nn.Linear)][-1]
        torch.testing.assert_close(probs, model(images), rtol=0, atol=1e-6)
    # The un-scaled map's spatial mean plus the bias difference is the PNEUMONIA - NORMAL logit.
    bias = head.bias[1] - head.bias[0]
    torch.testing.assert_close(
        raw.mean((1, 2)) + bias, logits[:, 1] - logits[:, 0], atol=1e-4, rtol=1e-4
    )
    assert heatmap.shape == (3, 2, 2)
    assert float(heatmap.min()) >= 0 and float(heatmap.max()) <= 1


def test_a_head_with_a_hidden_layer_has_no_exact_map() -> None:
    model = build_model("mobilenet_v3_small", 2)
    with pytest.raises(HeatmapUnsupportedError, match="2 linear layers"):
        cam_weights(model.backbone)


def test_synth_records_its_opacities(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    pixels, opacities = synth_case(np.random.default_rng(3), 64, True)
    assert np.array_equal(pixels, synth_image(rng, 64, True))  # the same draws as before
    assert 1 <= len(opacities) <= 2
    data = write_synthetic_dataset(tmp_path / "synth", count=12, image_size=32, seed=0)
    for path in data.rglob("*.png"):
        found = read_opacities(path)
        if path.parent.name == "NORMAL":
            assert found == []
        else:
            assert found and all(0.4 <= o.y <= 0.7 and 0.08 <= o.r <= 0.14 for o in found)


def test_the_heatmap_is_gradcam_of_the_same_trained_model(trained_run: Path) -> None:
    """pytorch-grad-cam's GradCAM of the PNEUMONIA-minus-NORMAL logit on the last feature map
    (a backward pass, resized to the input) against ``HEATMAP`` resized the same way, on the
    session's trained model fed 128 px images (a 4x4 map; its own 32 px give 1x1): for a head of
    global average pooling and one linear layer they are one map."""
    from pytorch_grad_cam import GradCAM

    from cxr.train.models import load_trained

    model, _ = load_trained(trained_run)
    rng = np.random.default_rng(5)
    images = torch.from_numpy(
        np.stack([synth_image(rng, 128, i % 3 != 0)[None] for i in range(12)])
    )

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return self.net.logits(image)

    targets = [lambda out: out[1] - out[0]] * len(images)
    with GradCAM(model=Logits(), target_layers=[model.backbone.layer4]) as cam:
        theirs = cam(input_tensor=images.float(), targets=targets)
    with torch.no_grad():
        ours = model.probs_and_heatmap(images)[1]
    assert ours.shape == (12, 4, 4)
    ours = torch.nn.functional.interpolate(ours[:, None], size=(128, 128), mode="bilinear")
    pairs = [(a.ravel(), b.ravel()) for a, b in zip(ours[:, 0].numpy(), theirs, strict=True)]
    shown = [(a, b) for a, b in pairs if a.std() > 0 and b.std() > 0]
    correlations = [float(np.corrcoef(a, b)[0, 1]) for a, b in shown]
    print(f"Pearson r of HEATMAP with GradCAM, {len(shown)} maps: min {min(correlations):.6f}")
    assert len(shown) >= 8 and min(correlations) > 0.999
