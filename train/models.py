"""torchvision backbones adapted to one-channel radiographs, wrapped to the serving contract.

:class:`TriageNet` takes ``IMAGE`` uint8 ``[N, 1, S, S]`` and returns ``PROBS`` float32 ``[N, C]``:
scaling, normalisation and softmax live inside the network, so the exported model, the server and
the training loop cannot disagree about preprocessing.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from train.card import WEIGHTS_FILE, ModelCard, RunDirError

#: Grayscale normalisation: the mean of ImageNet's channel means and standard deviations, the
#: statistics under which summing the RGB filters of the first convolution is faithful.
GRAY_MEAN = 0.449
GRAY_STD = 0.226
ARCHITECTURES = (
    "resnet18",
    "resnet34",
    "resnet50",
    "efficientnet_b0",
    "densenet121",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
)


class PretrainedWeightsError(RuntimeError):
    """ImageNet weights were asked for but cannot be had without the internet."""


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


def check_arch(arch: str) -> None:
    """Raise ``ValueError`` unless ``arch`` is a torchvision classification model."""
    if arch not in torchvision.models.list_models(module=torchvision.models):
        raise ValueError(f"unknown architecture {arch!r}; try one of {', '.join(ARCHITECTURES)}")


def pretrained_weights(arch: str, pretrained: str) -> dict[str, torch.Tensor] | None:
    """The backbone weights ``--pretrained`` names: ``imagenet`` (torchvision's local cache),
    ``none`` (None: train from scratch) or the path of a state-dict file."""
    check_arch(arch)
    if pretrained == "none":
        return None
    if pretrained == "imagenet":
        return imagenet_state_dict(arch)
    return _read_state_dict(Path(pretrained))


def build_model(
    arch: str, num_classes: int, weights: dict[str, torch.Tensor] | None = None
) -> TriageNet:
    """A :class:`TriageNet` around ``arch``, starting from ``weights`` (a torchvision state dict
    of the 3-channel backbone) or from random initialisation when None."""
    check_arch(arch)
    backbone = torchvision.models.get_model(arch, weights=None)
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
    return TriageNet(backbone)


def imagenet_state_dict(arch: str) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet weights for ``arch`` from the local cache, never the network."""
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not cached.is_file():
        raise PretrainedWeightsError(
            f"ImageNet weights for {arch} are not in the local cache ({cached}) and cxr never "
            "downloads at run time. Either copy the file there (on a connected machine: "
            f"python -c \"import torchvision; torchvision.models.get_model('{arch}', "
            "weights='DEFAULT')\" writes it to the same place), or pass "
            "--pretrained PATH/TO/weights.pth, or --pretrained none to train from scratch."
        )
    return _read_state_dict(cached)


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
    """Make the first 3-channel convolution take one channel by summing its RGB filters."""
    for parent in backbone.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d) and child.in_channels == 3:
                conv = nn.Conv2d(
                    1,
                    child.out_channels,
                    child.kernel_size,
                    child.stride,
                    child.padding,
                    child.dilation,
                    child.groups,
                    child.bias is not None,
                )
                with torch.no_grad():
                    conv.weight.copy_(child.weight.sum(dim=1, keepdim=True))
                    if child.bias is not None:
                        conv.bias.copy_(child.bias)
                setattr(parent, name, conv)
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
