"""``resume_plan`` and ``RowWriter`` on their own: which rows a resumed run keeps and which inputs
it sends again, and what each output format holds after a run and after a kill mid-run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cxr.client.protocol import Failure, Prediction
from cxr.client.results import RowWriter, read_rows, resume_plan, to_row


def prediction(source: str, sha: str = "a" * 64) -> Prediction:
    return Prediction(
        source=source,
        label="NORMAL",
        probabilities={"NORMAL": 0.9, "PNEUMONIA": 0.1},
        pneumonia_probability=0.1,
        urgent=False,
        threshold=0.5,
        model="pneumonia_int8",
        version="1",
        latency_ms=3.0,
        sha256=sha,
    )


def row(source: str, sha: str = "a" * 64, ok: bool = True) -> dict:
    result = prediction(source, sha) if ok else Failure(source, "unavailable", "down")
    return to_row(result)


def test_resume_keeps_unchanged_successes_and_resends_the_rest() -> None:
    rows = [
        row("same.png", "1" * 64),
        row("changed.png", "2" * 64),
        row("failed.png", ok=False),
        row("gone.png"),
    ]
    inputs = {
        "same.png": "1" * 64,
        "changed.png": "3" * 64,
        "failed.png": "4" * 64,
        "new.png": "5" * 64,
        "unreadable.png": None,
    }
    keep, send = resume_plan(rows, inputs)
    assert sorted(r["source"] for r in keep) == ["gone.png", "same.png"]
    assert send == ["changed.png", "failed.png", "new.png", "unreadable.png"]


def test_resume_keeps_one_success_even_after_a_later_failure_row() -> None:
    rows = [row("x.png", "1" * 64), row("x.png", ok=False), row("x.png", "1" * 64)]
    keep, send = resume_plan(rows, {"x.png": "1" * 64})
    assert [r["source"] for r in keep] == ["x.png"] and send == []


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "json"])
def test_writer_keeps_old_rows_then_adds_new_ones(tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"rows.{fmt}"
    writer = RowWriter(fmt, out, keep=[row("kept.png")])
    writer.write(prediction("b.png"))
    writer.write(Failure("a.png", "not_an_image", "not an image"), source="renamed.png")
    writer.close(order=["renamed.png", "kept.png", "b.png"])
    rows = read_rows(out, fmt)
    sources = [r["source"] for r in rows]
    if fmt == "json":
        assert sources == ["renamed.png", "kept.png", "b.png"]  # in the order asked for
    else:
        assert sources == ["kept.png", "b.png", "renamed.png"]  # as they completed
    failed = next(r for r in rows if r["source"] == "renamed.png")
    assert failed["error_code"] == "not_an_image"


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_streamed_rows_are_on_disk_before_close(tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"rows.{fmt}"
    writer = RowWriter(fmt, out)
    writer.write(prediction("a.png"))
    assert [r["source"] for r in read_rows(out, fmt)] == ["a.png"]  # a kill now keeps it
    writer.close()


def test_a_torn_last_line_is_not_a_row(tmp_path: Path) -> None:
    out = tmp_path / "rows.jsonl"
    out.write_text(json.dumps(row("a.png")) + "\n" + json.dumps(row("b.png"))[:40])
    assert [r["source"] for r in read_rows(out, "jsonl")] == ["a.png"]


def test_unknown_format() -> None:
    with pytest.raises(ValueError, match="--format must be one of"):
        RowWriter("xml", None)
