"""Fixtures for the training tests: tiny datasets written in each supported format, and a way to
run the ``cxr`` command in-process."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest


def synth_pixels(rng: np.random.Generator, label: int, size: int) -> np.ndarray:
    """A synthetic radiograph: class 0 clear lungs, any other class with opacities."""
    from cxr.train.synth import synth_image

    return synth_image(rng, size, pneumonia=label != 0)


@pytest.fixture
def make_folders(tmp_path: Path) -> Callable[..., Path]:
    """Write a Kermany-style tree ``ROOT/{split}/{CLASS}/*.png`` from ``{split: {class: n}}``."""
    from PIL import Image

    def make(layout: dict[str, dict[str, int]], size: int = 32, name: str = "kermany") -> Path:
        root = tmp_path / name
        rng = np.random.default_rng(0)
        for split, counts in layout.items():
            for cls, count in counts.items():
                folder = root / split / cls
                folder.mkdir(parents=True)
                for i in range(count):
                    pixels = synth_pixels(rng, int(cls.upper() != "NORMAL"), size)
                    Image.fromarray(pixels).save(folder / f"{cls.lower()}_{i:03d}.png")
        return root

    return make


@pytest.fixture
def make_npz(tmp_path: Path) -> Callable[..., Path]:
    """Write a MedMNIST-style ``.npz`` with ``{split}_images`` uint8 [N,H,W] and
    ``{split}_labels`` [N,1] from ``{split: labels}``."""

    def make(splits: dict[str, list[int]], size: int = 28, name: str = "data.npz") -> Path:
        rng = np.random.default_rng(0)
        arrays = {}
        for split, labels in splits.items():
            arrays[f"{split}_images"] = np.stack(
                [synth_pixels(rng, label, size) for label in labels]
            ).astype(np.uint8)
            arrays[f"{split}_labels"] = np.asarray(labels, np.uint8).reshape(-1, 1)
        path = tmp_path / name
        np.savez(path, **arrays)
        return path

    return make


@dataclass
class Invocation:
    """Exit code and output of one in-process ``cxr`` call."""

    code: int
    out: str
    err: str

    def err_names(self, *texts: str | Path) -> bool:
        """Whether stderr contains every text, ignoring whitespace (the console wraps lines)."""
        flat = "".join(self.err.split())
        return all("".join(str(text).split()) in flat for text in texts)


@pytest.fixture
def cxr(capsys: pytest.CaptureFixture[str]) -> Callable[..., Invocation]:
    """Run ``cxr ARGS...`` in this process and return its exit code, stdout and stderr."""
    from cxr.cli import main

    def run(*args: str | Path) -> Invocation:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else 1
        captured = capsys.readouterr()
        return Invocation(code, captured.out, captured.err)

    return run
