"""Results bound to content: rows carry the input's SHA-256 and the model, ``--resume`` redoes a
replaced input and finds the same rows from another working directory; ``--out`` is locked,
symlinks resolved, never emptied by accident, and an I/O error ends with exit 2, rows kept."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from fuzz_inputs import png_bytes

from cxr.client.results import read_rows, row_ok


def write_pngs(folder: Path, count: int, size: int = 64, seed: int = 0) -> list[Path]:
    """``count`` random grayscale PNGs in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = [folder / f"img{i:04d}.png" for i in range(count)]
    for path in paths:
        path.write_bytes(png_bytes(rng.integers(0, 256, (size, size), dtype=np.uint8)))
    return paths


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    """Three small PNGs of this test's own, in ``tmp_path / "in"``."""
    return write_pngs(tmp_path / "in", 3, seed=7)


def test_rows_record_the_content_digest_and_model(triton, run_cli, images, tmp_path) -> None:
    out = tmp_path / "out" / "rows.jsonl"
    done = run_cli("predict", *map(str, images), "--url", triton.grpc_url, "--format", "jsonl",
                   "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = {row["source"]: row for row in read_rows(out, "jsonl")}
    # Sources are relative to the folder of --out.
    assert set(rows) == {os.path.join("..", "in", path.name) for path in images}
    for path in images:
        row = rows[os.path.join("..", "in", path.name)]
        assert row["sha256"] == sha256(path)
        assert row["model"].startswith("pneumonia_") and row["version"] == "1"


def test_resume_predicts_a_replaced_input_again(triton, run_cli, images, tmp_path) -> None:
    out = tmp_path / "rows.jsonl"
    args = ["predict", *map(str, images), "--url", triton.grpc_url, "--format", "jsonl"]
    assert run_cli(*args, "--out", str(out)).returncode == 0
    before = {row["source"]: row for row in read_rows(out, "jsonl")}
    replaced = images[0]
    replacement = write_pngs(tmp_path / "other", 1, seed=99)[0]
    replaced.unlink()
    shutil.copy(replacement, replaced)  # another image at the same path
    done = run_cli(*args, "--out", str(out), "--resume")
    assert done.returncode == 0, done.stderr
    assert f"{len(images) - 1} already done" in done.stderr
    after = read_rows(out, "jsonl")
    assert len(after) == len(images)  # the old row was replaced, not kept beside the new one
    by_source = {row["source"]: row for row in after}
    name = os.path.relpath(replaced, tmp_path)
    assert by_source[name]["sha256"] == sha256(replacement) != before[name]["sha256"]
    assert by_source[name]["latency_ms"] != before[name]["latency_ms"]  # sent again
    for path in images[1:]:  # unchanged: kept, not sent again
        name = os.path.relpath(path, tmp_path)
        assert by_source[name]["latency_ms"] == before[name]["latency_ms"]


def test_resume_from_another_working_directory(
    triton, run_cli, images, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "results" / "rows.csv"
    monkeypatch.chdir(tmp_path / "in")
    first = run_cli("predict", *(p.name for p in images), "--url", triton.grpc_url,
                    "--format", "csv", "--out", str(out))  # fmt: skip
    assert first.returncode == 0, first.stderr
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    again = run_cli("predict", "../in", "--url", triton.grpc_url, "--format", "csv",
                    "--out", "../results/rows.csv", "--resume")  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert f"{len(images)} already done" in again.stderr
    rows = read_rows(out, "csv")
    assert sorted(row["source"] for row in rows) == sorted(f"../in/{p.name}" for p in images)


def test_a_second_run_on_the_same_out_stops(triton, run_cli, cli_command, many_pngs, tmp_path):
    out = tmp_path / "rows.jsonl"
    args = ["predict", str(many_pngs[0].parent), "--url", triton.grpc_url, "--format", "jsonl",
            "--out", str(out), "--concurrency", "2"]  # fmt: skip
    first = subprocess.Popen(cli_command(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not read_rows(out, "jsonl"):  # the first run holds the file
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        second = run_cli(*args, "--resume")
        assert second.returncode == 2, second.stderr
        assert "is being written by another run" in second.stderr
    finally:
        _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    rows = read_rows(out, "jsonl")
    assert len(rows) == len(many_pngs) and all(map(row_ok, rows))


def test_the_lock_is_released_when_a_run_ends(triton, run_cli, images, tmp_path) -> None:
    out = tmp_path / "rows.jsonl"
    args = ["predict", str(images[0]), "--url", triton.grpc_url, "--format", "jsonl"]
    assert run_cli(*args, "--out", str(out)).returncode == 0
    lock_path = tmp_path / ".rows.jsonl.lock"
    assert not lock_path.exists()  # removed at the end
    assert run_cli(*args, "--out", str(out), "--resume").returncode == 0  # free again
    with open(lock_path, "a") as lock:  # as a run in progress holds it
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held = run_cli(*args, "--out", str(out), "--resume")
    assert held.returncode == 2 and "being written by another run" in held.stderr


def test_a_non_empty_out_needs_resume_or_overwrite(triton, run_cli, images, tmp_path) -> None:
    out = tmp_path / "rows.jsonl"
    args = ["predict", *map(str, images), "--url", triton.grpc_url, "--format", "jsonl"]
    assert run_cli(*args, "--out", str(out)).returncode == 0
    text = out.read_text()
    refused = run_cli(*args[:2], "--url", triton.grpc_url, "--format", "jsonl", "--out", str(out))
    assert refused.returncode == 2 and "already holds results" in refused.stderr
    assert out.read_text() == text
    overwritten = run_cli(*args[:2], "--url", triton.grpc_url, "--format", "jsonl",
                          "--out", str(out), "--overwrite")  # fmt: skip
    assert overwritten.returncode == 0, overwritten.stderr
    assert len(read_rows(out, "jsonl")) == 1


def test_a_symlinked_out_writes_its_target(triton, run_cli, images, tmp_path) -> None:
    target = tmp_path / "real" / "rows.jsonl"
    target.parent.mkdir()
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    args = ["predict", *map(str, images), "--url", triton.grpc_url, "--format", "jsonl"]
    done = run_cli(*args, "--out", str(link))
    assert done.returncode == 0, done.stderr
    assert link.is_symlink() and link.resolve() == target
    rows = read_rows(target, "jsonl")
    # Sources are relative to the target's folder, where the rows live.
    assert sorted(r["source"] for r in rows) == sorted(f"../in/{p.name}" for p in images)


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A 16 KiB tmpfs (skips where mounting is not permitted)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mount)],
                          check=False, capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_ends_with_exit_2_and_keeps_the_rows(triton, run_cli, tiny_disk, tmp_path):
    # Long names make rows long: the 16 KiB fill up after a few dozen rows.
    folder = tmp_path / ("d" * 200)
    pngs = write_pngs(folder, 60, size=16)
    named = [p.rename(p.with_name(f"{'n' * 200}{p.name}")) for p in pngs]
    out = tiny_disk / "rows.jsonl"
    done = run_cli("predict", str(folder), "--url", triton.grpc_url, "--format", "jsonl",
                   "--out", str(out), "--concurrency", "2")  # fmt: skip
    assert done.returncode == 2, done.stderr
    message = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(message) == 1 and "No space left on device" in message[0], done.stderr
    assert "Traceback" not in done.stderr
    kept = read_rows(out, "jsonl")  # complete rows only; a torn last line is ignored
    assert 0 < len(kept) < len(named) and all(map(row_ok, kept))
