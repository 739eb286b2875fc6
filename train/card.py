"""The model card (``card.json`` in a run directory): what a trained model is and how to use it.

Read by conversion and by the model-repository builder; light (no torch) on purpose.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cxr.client import contract

CARD_FILE = "card.json"
WEIGHTS_FILE = "model.pt"
CURVES_FILE = "training_curves.png"
HISTORY_FILE = "history.json"


class RunDirError(ValueError):
    """A run directory that is missing files or was made under another contract."""


def current_contract() -> dict[str, str]:
    """The tensor contract a run is trained under, recorded in its card and checked on use."""
    return {
        "input": f"{contract.IMAGE} {contract.IMAGE_TRITON_DTYPE} [N,1,S,S]",
        "output": f"{contract.PROBS} {contract.PROBS_TRITON_DTYPE} [N,C] softmax",
    }


@dataclass
class ModelCard:
    """Everything needed to export, serve and interpret a trained classifier."""

    arch: str
    classes: list[str]
    image_size: int
    threshold: float
    normalisation: dict[str, float]
    target_sensitivity: float = 0.95
    val_metrics: dict[str, Any] = field(default_factory=dict)
    val_source: str = ""
    #: Where the starting weights came from: ``none``, ``file PATH``, ``package NAME VERSION``...
    weights_source: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    contract: dict[str, str] = field(default_factory=current_contract)

    @property
    def positive_class(self) -> str:
        """The class whose probability drives triage: the last one for binary models."""
        return self.classes[-1] if len(self.classes) == 2 else "not " + self.classes[0]

    def save(self, run_dir: Path) -> Path:
        """Write ``card.json`` into ``run_dir``."""
        path = run_dir / CARD_FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, run_dir: Path) -> ModelCard:
        """Read and validate a run directory's card."""
        path = run_dir / CARD_FILE
        if not run_dir.is_dir():
            raise RunDirError(f"run directory not found: {run_dir}")
        if not path.is_file():
            raise RunDirError(f"{run_dir}: no {CARD_FILE} (not a run directory of `cxr train`)")
        try:
            raw = json.loads(path.read_text())
            card = cls(**raw)
        except (json.JSONDecodeError, TypeError) as err:
            raise RunDirError(f"{path}: malformed model card ({err})") from err
        if card.contract != current_contract():
            raise RunDirError(
                f"{path}: trained under another tensor contract {card.contract}; this version of "
                f"cxr expects {current_contract()}. Retrain, or convert with the matching version."
            )
        return card
