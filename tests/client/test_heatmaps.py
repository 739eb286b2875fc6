"""``HEATMAP`` on the session's real server: sent only when asked, by the classifiers and the
ensemble, the same map both ways; ``cxr client predict --heatmaps DIR`` writes one overlay per
input and names it in its row; bad ``--heatmaps`` folders are refused before anything is sent.

The session's model reduces 32 px to a 1x1 feature map, so its maps are all zeros: these tests
check the plumbing. That the map is Grad-CAM is checked in ``tests/train/test_heatmap_units.py``
on a 4x4 map of the same model.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image

from cxr.client import AsyncTriageClient, TriageClient, contract
from cxr.client.imaging import load_model_input
from cxr.client.results import COLUMNS, HEATMAP_COLUMN, HEATMAP_COLUMNS

DEADLINE_S = 30


def outputs_of(url: str, model: str, image: np.ndarray, asked: list[str]) -> dict:
    """Output name -> array of one raw gRPC request to ``model`` asking for ``asked``."""
    client = grpcclient.InferenceServerClient(url)
    tensor = grpcclient.InferInput(contract.IMAGE, [1, *image.shape], contract.IMAGE_TRITON_DTYPE)
    tensor.set_data_from_numpy(image[None])
    requested = [grpcclient.InferRequestedOutput(name) for name in asked]
    reply = client.infer(model, [tensor], outputs=requested, client_timeout=DEADLINE_S)
    return {o.name: reply.as_numpy(o.name) for o in reply.get_response().outputs}


@pytest.mark.parametrize("variant", contract.CPU_VARIANTS)
def test_a_classifier_sends_the_heatmap_only_when_asked(
    triton, xray_pngs: list[Path], variant: str
) -> None:
    model = contract.classifier_model(variant)
    image = load_model_input(xray_pngs[-1].read_bytes(), 32)
    plain = outputs_of(triton.grpc_url, model, image, [contract.PROBS])
    both = outputs_of(triton.grpc_url, model, image, [contract.PROBS, contract.HEATMAP])
    assert set(plain) == {contract.PROBS} and set(both) == {contract.PROBS, contract.HEATMAP}
    np.testing.assert_array_equal(plain[contract.PROBS], both[contract.PROBS])
    heatmap = both[contract.HEATMAP]
    assert heatmap.dtype == contract.HEATMAP_DTYPE and heatmap.shape == (1, 1, 1)  # 32 px / 32
    assert heatmap.min() >= 0 and heatmap.max() <= 1


def test_the_library_and_the_ensemble_return_the_same_heatmap(
    triton, xray_pngs: list[Path]
) -> None:
    with TriageClient(triton.grpc_url) as plain:
        without = plain.predict(xray_pngs)
    with TriageClient(triton.grpc_url, heatmaps=True) as local:
        mapped = local.predict(xray_pngs)
    with TriageClient(triton.grpc_url, server_preprocess=True, heatmaps=True) as remote:
        remote_mapped = remote.predict(xray_pngs)
    assert all(r.ok and r.heatmap is None and r.image is None for r in without)
    for old, new, far in zip(without, mapped, remote_mapped, strict=True):
        assert new.ok and far.ok and far.model == contract.ENSEMBLE_MODEL
        assert new.pneumonia_probability == pytest.approx(old.pneumonia_probability, abs=1e-6)
        assert new.heatmap.shape == far.heatmap.shape == (1, 1)
        np.testing.assert_allclose(new.heatmap, far.heatmap, atol=1e-6)
        assert new.image.shape == (32, 32) and new.image.dtype == np.uint8  # the model input
        np.testing.assert_array_equal(far.image, new.image)  # decoded on the client for the overlay
        assert "heatmap" not in new.as_row() and "image" not in new.as_row()


def test_the_async_client_returns_heatmaps_too(triton, xray_pngs: list[Path]) -> None:
    async def run() -> list:
        async with AsyncTriageClient(triton.grpc_url, heatmaps=True) as client:
            return await client.predict(xray_pngs)

    results = asyncio.run(run())
    assert all(r.ok and r.heatmap is not None and r.heatmap.shape == (1, 1) for r in results)


@pytest.mark.parametrize("server_preprocess", [False, True])
def test_predict_writes_one_overlay_per_input_and_names_it(
    triton, run_cli, xray_pngs: list[Path], tmp_path: Path, server_preprocess: bool
) -> None:
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"not an image")
    out, folder = tmp_path / "rows.jsonl", tmp_path / "maps"
    extra = ["--server-preprocess"] if server_preprocess else []
    inputs = [*map(str, xray_pngs), str(bad)]
    done = run_cli(
        "predict", *inputs, "--url", triton.grpc_url, "--format", "jsonl", "--out", str(out),
        "--heatmaps", str(folder), *extra,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr  # the bad input's row
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(tuple(row) == HEATMAP_COLUMNS for row in rows)
    by_name = {Path(row["source"]).name: row for row in rows}
    assert by_name["notes.png"][HEATMAP_COLUMN] == ""
    written = sorted(folder.iterdir())
    assert len(written) == len(xray_pngs)
    named = sorted(out.parent / by_name[p.name][HEATMAP_COLUMN] for p in xray_pngs)
    assert [p.resolve() for p in named] == [p.resolve() for p in written]
    for path in written:
        with Image.open(path) as picture:
            assert picture.format == "PNG" and picture.mode == "RGB" and picture.size == (256, 256)


def test_without_heatmaps_the_rows_are_unchanged(
    triton, run_cli, xray_pngs: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "rows.jsonl"
    done = run_cli("predict", str(xray_pngs[0]), "--url", triton.grpc_url, "--format", "jsonl",
                   "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert tuple(json.loads(out.read_text())) == COLUMNS


@pytest.mark.parametrize("case", ["a_file", "under_a_file"])
def test_a_heatmaps_folder_that_cannot_be_one_is_refused(
    triton, run_cli, xray_pngs: list[Path], tmp_path: Path, case: str
) -> None:
    blocker = tmp_path / "taken"
    blocker.write_text("a file")
    target = blocker if case == "a_file" else blocker / "maps"
    done = run_cli("predict", str(xray_pngs[0]), "--url", triton.grpc_url,
                   "--heatmaps", str(target))  # fmt: skip
    assert done.returncode == 2
    assert "--heatmaps:" in done.stderr and str(target) in done.stderr
    assert "Traceback" not in done.stderr
    assert blocker.read_text() == "a file"
