"""Result rows: one per input, written as table, JSON, JSON Lines or CSV, and resumable.

Streaming formats (jsonl, csv) append and flush each row as it completes, so a run killed at any
moment keeps every finished row; ``--resume`` reads them back (a torn last line is ignored), keeps
the successes, and sends again only the inputs without one.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from client.protocol import Result

FORMATS = ("table", "json", "jsonl", "csv")
STREAMING = ("jsonl", "csv")
COLUMNS = (
    "source",
    "ok",
    "label",
    "pneumonia_probability",
    "urgent",
    "threshold",
    "model",
    "version",
    "latency_ms",
    "error_code",
    "error",
    "probabilities",
)


def to_row(result: Result) -> dict[str, Any]:
    """A flat row with every column present (empty where not applicable)."""
    raw = result.as_row()
    row = dict.fromkeys(COLUMNS, "")
    row.update({k: v for k, v in raw.items() if k in COLUMNS})
    if not result.ok:
        row["error_code"], row["error"] = raw["code"], raw["message"]
    return row


def read_rows(path: Path, fmt: str) -> list[dict[str, Any]]:
    """Rows already in an output file; malformed or torn lines are skipped."""
    if not path.is_file():
        return []
    text = path.read_text(errors="replace")
    if fmt == "jsonl":
        rows = []
        for line in text.splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and "source" in row:
                rows.append(row)
        return rows
    if fmt == "csv":
        complete = text if text.endswith("\n") else text[: text.rfind("\n") + 1]
        return [r for r in csv.DictReader(io.StringIO(complete)) if r.get("source")]
    if fmt == "json":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError:
            return []
        return [r for r in rows if isinstance(r, dict) and "source" in r]
    raise ValueError(f"cannot resume from format {fmt!r}")


def row_ok(row: dict[str, Any]) -> bool:
    """Whether a stored row is a success (JSON booleans or CSV strings)."""
    return row.get("ok") in (True, "True", "true", "1")


class RowWriter:
    """Writes rows to a file or stdout in one of :data:`FORMATS`."""

    def __init__(self, fmt: str, path: Path | None, keep: Iterable[dict[str, Any]] = ()) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
        self.fmt = fmt
        self.path = path
        self.rows: list[dict[str, Any]] = list(keep)
        self._stream: IO[str] | None = None
        self._csv: csv.DictWriter | None = None
        if fmt in STREAMING:
            self._open_stream()

    def _open_stream(self) -> None:
        """Start the stream with the header and the kept rows, replacing the file atomically so a
        kill at any moment leaves either the old file or the new one, never fewer rows."""
        if self.path is None:
            import sys

            self._stream = sys.stdout
            self._start(self._stream)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        initial = io.StringIO()
        self._start(initial)
        _atomic_write(self.path, initial.getvalue())
        self._stream = self.path.open("a", encoding="utf-8", newline="")
        if self.fmt == "csv":
            self._csv = csv.DictWriter(self._stream, fieldnames=COLUMNS)

    def _start(self, stream: IO[str]) -> None:
        self._stream = stream
        if self.fmt == "csv":
            self._csv = csv.DictWriter(stream, fieldnames=COLUMNS)
            self._csv.writeheader()
        for row in self.rows:
            self._emit(row)
        stream.flush()

    def _emit(self, row: dict[str, Any]) -> None:
        assert self._stream is not None
        if self._csv is not None:
            probabilities = row["probabilities"]
            if isinstance(probabilities, dict):
                probabilities = json.dumps(probabilities)
            self._csv.writerow({**row, "probabilities": probabilities})
        else:
            self._stream.write(json.dumps(row) + "\n")

    def write(self, result: Result) -> None:
        """Record one result (streamed immediately for jsonl/csv)."""
        row = to_row(result)
        self.rows.append(row)
        if self._stream is not None:
            self._emit(row)
            self._stream.flush()
            if self.path is not None:
                os.fsync(self._stream.fileno())

    def close(self, order: list[str] | None = None) -> None:
        """Finish the output (table and json are written here, atomically, in ``order``)."""
        if order is not None and self._stream is None:
            rank = {source: i for i, source in enumerate(order)}
            self.rows.sort(key=lambda row: rank.get(row["source"], len(rank)))
        if self._stream is not None:
            if self.path is not None:
                self._stream.close()
            return
        if self.fmt == "json":
            text = json.dumps(self.rows, indent=2) + "\n"
            if self.path is None:
                print(text, end="")
            else:
                _atomic_write(self.path, text)
        else:
            render_table(self.rows, self.path)


def render_table(rows: list[dict[str, Any]], path: Path | None) -> None:
    """A human-readable table on stdout (or in a file)."""
    from rich.console import Console
    from rich.table import Table

    table = Table("input", "result", "P(pneumonia)", "urgent", "ms")
    for row in rows:
        if row_ok(row):
            table.add_row(
                row["source"],
                str(row["label"]),
                f"{float(row['pneumonia_probability']):.3f}",
                "URGENT" if row["urgent"] in (True, "True") else "",
                f"{float(row['latency_ms']):.1f}",
            )
        else:
            table.add_row(row["source"], f"[red]error[/red] {row['error']}", "", "", "")
    if path is None:
        Console(soft_wrap=False).print(table)
    else:
        with path.open("w") as handle:
            Console(file=handle, width=160).print(table)


def _atomic_write(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
