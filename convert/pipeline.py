"""``cxr convert``: export, check and publish a trained run into the model repository."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from client.contract import classifier_model
from convert.export import Parity, export_onnx, torch_parity
from server.repository import Classifier, deployable, publish_classifier, publish_front
from train.data import load_split

PARITY_IMAGES = 32


class ConversionError(RuntimeError):
    """A conversion step failed its check; nothing was published for that variant."""


def convert_run(run_dir: Path, repo: Path, work_dir: Path | None = None) -> dict:
    """Export FP32 ONNX, check parity on real images of the run's data, publish it."""
    from train.models import load_trained

    model, card = load_trained(run_dir)
    work = work_dir or run_dir / "onnx"
    onnx_path = export_onnx(model, card, work / "model_fp32.onnx")
    images = load_split(Path(card.data["path"]), "val", card.image_size).images[:PARITY_IMAGES]
    parity: Parity = torch_parity(model, onnx_path, images)
    if not parity.ok:
        raise ConversionError(
            f"FP32 ONNX differs from PyTorch by {parity.max_abs_diff:.2e} on {parity.output} "
            f"(limit {parity.limit:.0e}); not published"
        )
    card_dict = {**asdict(card), "positive_class": card.positive_class}
    fp32 = Classifier("fp32", onnx_path, card_dict)
    publish_classifier(repo, fp32)
    publish_front(repo, deployable([fp32]))
    return {"published": [classifier_model("fp32")], "parity": [parity.as_dict()]}
