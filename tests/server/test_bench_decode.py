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
        assert row["uncompressed ms"] > 0 and row["ceiling"] > 0


def test_bench_decode_refuses_an_unknown_syntax() -> None:
    done = CliRunner().invoke(bench_app, ["decode", "--syntax", "jpeg-xl"])
    assert done.exit_code == 2 and "unknown syntax" in done.output


def test_a_table_too_wide_for_the_terminal_turns_rather_than_cuts(monkeypatch, capsys) -> None:
    from cxr.bench.cli import print_rows

    rows = [{f"column {n}": f"{n}.{row}" for n in range(14)} for row in range(3)]
    for columns, turned in (("80", True), ("400", False)):
        monkeypatch.setenv("COLUMNS", columns)
        print_rows("figures", rows)
        lines = capsys.readouterr().out.splitlines()
        assert all(len(line) <= int(columns) for line in lines)
        cells = {cell.strip() for line in lines for cell in line.split("│") + line.split("┃")}
        assert {key for row in rows for key in row} | {v for r in rows for v in r.values()} <= cells
        assert any(line.lstrip("│ ").startswith("column 0") for line in lines) == turned
