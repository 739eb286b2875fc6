"""``cxr bench decode`` runs both decoders on the radiographs it generates and reports them (what
it measures is a benchmark, not a test)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from cxr.bench.cli import bench_app  # with ``decode`` registered


def test_bench_decode_reports_both_paths_and_the_machine() -> None:
    args = ["--syntax", "explicit", "--count", "2", "--repeat", "1", "--size", "64", "--json"]
    done = CliRunner().invoke(bench_app, ["decode", *args])
    assert done.exit_code == 0, done.output
    report = json.loads(done.output[done.output.index("{") :])
    assert report["machine"].startswith("ISA ") and "load average" in report["machine"]
    rows = report["rows"]
    assert [(row["syntax"], row["bits"], row["images"]) for row in rows] == [
        ("explicit", 12, 1),
        ("explicit", 16, 1),
    ]
    for row in rows:
        assert row["fast ms"] > 0 and row["reference ms"] > 0 and row["speed-up"] > 0
        assert row["resize ms"] > 0 and row["ceiling"] > 0


def test_bench_decode_refuses_an_unknown_syntax() -> None:
    done = CliRunner().invoke(bench_app, ["decode", "--syntax", "jpeg-xl"])
    assert done.exit_code == 2 and "unknown syntax" in done.output
