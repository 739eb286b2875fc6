"""Heatmap overlays without a server: the Turbo approximation against matplotlib's table, the
picture, file names, the folder check, and the client refusing a model without ``HEATMAP``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cxr.client import contract
from cxr.client.overlay import (
    MIN_SIDE,
    heatmap_folder,
    hot_spot,
    overlay,
    overlay_name,
    turbo,
)
from cxr.client.protocol import ModelInfo, TriageError


def test_turbo_follows_matplotlibs_table() -> None:
    import matplotlib

    x = np.linspace(0, 1, 256)
    difference = np.abs(turbo(x) - matplotlib.colormaps["turbo"](x)[:, :3])
    assert difference.mean() < 0.05 and difference.max() < 0.15
    assert turbo(np.array([-1.0, 2.0])).tolist() == turbo(np.array([0.0, 1.0])).tolist()


def test_the_overlay_is_coloured_where_the_map_is_hot() -> None:
    image = np.full((32, 32), 100, np.uint8)
    heatmap = np.zeros((4, 4), np.float32)
    heatmap[3, 3] = 1.0  # bottom right
    picture = np.asarray(overlay(image, heatmap, 0.9, 0.5, True))
    assert picture.shape == (MIN_SIDE, MIN_SIDE, 3)
    cold, hot = picture[MIN_SIDE // 2, 10], picture[-5, -5]
    assert cold.tolist() == [100, 100, 100]  # a cold map leaves the image grey
    assert hot.max() - hot.min() > 40  # coloured
    assert picture[:3, :40].max() == 0 and picture[:20, :200].max() > 200  # white on black


def test_the_hot_spot_is_where_the_overlay_is_hottest() -> None:
    heatmap = np.zeros((7, 7), np.float32)
    heatmap[5, 1] = 1.0  # the cell centred at x = 1.5 / 7, y = 5.5 / 7
    x, y = hot_spot(heatmap, 224)
    assert x == pytest.approx(1.5 / 7, abs=1 / MIN_SIDE) and y == pytest.approx(
        5.5 / 7, abs=1 / MIN_SIDE
    )
    picture = np.asarray(overlay(np.full((224, 224), 100, np.uint8), heatmap, 0.9, 0.5, True))
    spot = picture[int(y * MIN_SIDE), int(x * MIN_SIDE)]
    assert spot.max() - spot.min() > 40  # the overlay is coloured there
    assert hot_spot(np.zeros((7, 7), np.float32), 512) == (0.5 / 512, 0.5 / 512)  # first of ties


def test_overlay_names_are_flat_and_distinct() -> None:
    names = {overlay_name(s) for s in ("a/b.png", "a_b.png", "../x/b.png", "b.png")}
    assert len(names) == 4
    assert all("/" not in n and n.endswith(".heatmap.png") for n in names)
    assert len(overlay_name("d/" * 300 + "x.png")) < 200


def test_the_heatmap_folder_must_be_a_folder(tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        heatmap_folder(taken)
    with pytest.raises(ValueError, match="cannot create the folder"):
        heatmap_folder(taken / "below")
    assert heatmap_folder(tmp_path / "new" / "maps").is_dir()


def test_asking_a_model_without_heatmap_is_a_bad_model() -> None:
    config = {
        "name": "pneumonia_fp32",
        "input": [{"name": contract.IMAGE, "dims": [1, 32, 32]}],
        "output": [{"name": contract.PROBS, "dims": [2]}],
        "parameters": {
            contract.PARAM_THRESHOLD: {"string_value": "0.5"},
            contract.PARAM_CLASSES: {"string_value": "NORMAL,PNEUMONIA"},
        },
    }
    assert not ModelInfo.from_configs("m", config, False).heatmaps
    with pytest.raises(TriageError, match=f"no {contract.HEATMAP} output") as caught:
        ModelInfo.from_configs("m", config, False, heatmaps=True)
    assert caught.value.code == "bad_model"
    config["output"].append({"name": contract.HEATMAP, "dims": [1, 1]})
    assert ModelInfo.from_configs("m", config, False, heatmaps=True).heatmaps
