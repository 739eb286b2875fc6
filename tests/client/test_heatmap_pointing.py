"""Does the heatmap point at the finding? The pointing game of issue 17, end to end.

A model that can localise: EfficientNet-Lite0 from its ImageNet weights (the offline package) at
224 px, so its map is 7x7 (the session's 32 px model has a 1x1 map), trained on ``cxr data
synth`` images, which record where each opacity was drawn. Then, on fresh synthetic images
(another seed), the map's peak is checked against the recorded opacities in process
(``cxr evaluate --heatmaps``) and through a real Triton serving the converted model
(``cxr client predict --heatmaps``: the overlays' hot spots).

Not a lucky draw: the same recipe on seeds 0, 1 and 2 scored 0.71 to 0.89 on these images,
against a uniformly random point's 0.13 (README, "Does the map point at the finding?"), so the
limits below (0.5, and 3x chance: 0.40) leave a wide margin; the fixture checks that the model
classifies before any test uses it.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from cxr.client.results import HEATMAP_COLUMN, HOT_SPOT_COLUMNS

#: Training takes ~4 minutes on 2 quiet cores: the hang guard keeps a 10x margin over it.
pytestmark = pytest.mark.timeout(2400)

#: 224 px: a 7x7 map (the backbone's stride is 32).
SIZE = 224
#: "Most positive images": the share of peaks on an opacity both paths must reach.
MOST = 0.5
#: How many times a uniformly random point's score the model must reach.
ABOVE_CHANCE = 3
#: The model must separate fresh images at least this well before it is used (AUC).
MIN_AUC = 0.95


class LocalisingModelError(AssertionError):
    """The pointing game's model does not classify: the recipe below changed."""


@pytest.fixture(scope="module")
def fresh_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic images the model never saw: its ``train`` split (210 images, 126 positive) is
    what the tests score."""
    from cxr.train.synth import write_synthetic_dataset

    folder = tmp_path_factory.mktemp("pointing") / "fresh"
    return write_synthetic_dataset(folder, count=300, image_size=SIZE, seed=5)


@pytest.fixture(scope="module")
def localising_run(tmp_path_factory: pytest.TempPathFactory, fresh_data: Path) -> Path:
    """EfficientNet-Lite0 (ImageNet) fine-tuned 10 epochs at 224 px on 400 synthetic images,
    checked to separate :func:`fresh_data`'s classes (AUC >= :data:`MIN_AUC`)."""
    from cxr.train.evaluate import evaluate
    from cxr.train.synth import write_synthetic_dataset
    from cxr.train.trainer import TrainConfig, train

    root = tmp_path_factory.mktemp("pointing")
    data = write_synthetic_dataset(root / "synth", count=400, image_size=SIZE, seed=0)
    config = TrainConfig(image_size=SIZE, epochs=10, batch_size=32, seed=0, device="cpu")
    train(data, root / "run", config)
    auc = evaluate(str(root / "run"), fresh_data, "val").metrics["auc"]
    if auc < MIN_AUC:
        raise LocalisingModelError(
            f"the pointing game's model reaches AUC {auc:.3f} on fresh images, below {MIN_AUC}: "
            "training changed; adjust the recipe in this file"
        )
    return root / "run"


def assert_points_at_findings(game: dict) -> None:
    """The score reaches :data:`MOST` and :data:`ABOVE_CHANCE` times chance."""
    score, chance = game["pointing_game"], game["pointing_game_chance"]
    assert game["pointing_game_images"] >= 100, game
    assert score >= MOST and score >= ABOVE_CHANCE * chance, game


def test_the_run_dirs_heatmaps_point_at_the_opacities(
    localising_run: Path, fresh_data: Path, tmp_path: Path
) -> None:
    from cxr.train.evaluate import evaluate

    report = evaluate(str(localising_run), fresh_data, "train", heatmaps=tmp_path / "maps")
    print({k: v for k, v in report.metrics.items() if k.startswith("pointing")})
    assert_points_at_findings(report.metrics)
    assert report.overlays["TP"], "true positives drawn"


@pytest.fixture(scope="module")
def localising_server(
    localising_run: Path,
    fresh_data: Path,
    tmp_path_factory: pytest.TempPathFactory,
    start_server: Callable,
):
    """The run converted (FP32 only, gated on :func:`fresh_data`), published, and served."""
    from cxr.convert.pipeline import ConvertOptions, convert_run

    root = tmp_path_factory.mktemp("pointing-repo")
    options = ConvertOptions(
        precisions=("fp32",),
        gate_data=fresh_data,
        perturbations=(),
        tensorrt="off",
        report_dir=root / "report",
        bench_seconds=0,
    )
    convert_run(localising_run, root / "model_repository", root / "work", options)
    return start_server(root / "model_repository")


def test_served_overlays_hot_spots_lie_on_the_opacities(
    localising_server, fresh_data: Path, run_cli: Callable, tmp_path: Path
) -> None:
    from cxr.train.metrics import pointing_game
    from cxr.train.synth import read_opacities

    positives = sorted((fresh_data / "train" / "PNEUMONIA").glob("*.png"))
    out, folder = tmp_path / "rows.jsonl", tmp_path / "maps"
    done: subprocess.CompletedProcess = run_cli(
        "predict", *map(str, positives), "--url", localising_server.grpc_url, "--format",
        "jsonl", "--out", str(out), "--heatmaps", str(folder),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = {Path(row["source"]).name: row for row in map(json.loads, out.open())}
    assert len(rows) == len(positives) == len(list(folder.iterdir()))
    for path in positives:
        assert (out.parent / rows[path.name][HEATMAP_COLUMN]).is_file()
    spots = [tuple(float(rows[p.name][c]) for c in HOT_SPOT_COLUMNS) for p in positives]
    drawn = [[(o.x, o.y, o.r) for o in read_opacities(p) or []] for p in positives]
    game = pointing_game(spots, drawn)
    print(game)
    assert_points_at_findings(game)
