"""Result rows: one per input, written as table, JSON, JSON Lines or CSV, and resumable.

Kill safety: with ``--out``, every row is written to the file (jsonl, csv) or to a journal beside
it (json: ``.NAME.journal.jsonl``, turned into the final file at the end) and flushed to the
operating system as soon as it completes, so a process killed at any moment keeps every finished
row. ``fsync`` runs at most once per :data:`SYNC_EVERY` seconds and at the end: a machine crash
may lose the last second of rows, which ``--resume`` simply sends again. A file is only ever
replaced atomically (written aside, synced, renamed), so a kill leaves the old file or the new one.

Resume reads the rows back (a torn last line is ignored), keeps each input's success only while
the input's content is the same (its SHA-256 is in the row), and sends again the inputs with no
row, an error row or changed content, whose new row replaces the old one.

Ownership of ``--out``: :func:`claim_output` resolves a symlink to its target, refuses a file that
holds rows unless the run resumes or overwrites it, and takes an exclusive lock (``flock`` on
``.NAME.lock`` beside it) for the whole run, so two runs never write the same file;
:func:`release_output` removes the lock file while still holding it (a run that locked a removed
lock file sees that it is no longer the one at the path and stops).
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, get_args

from cxr.client.choices import Format
from cxr.client.files import write_atomic

if TYPE_CHECKING:
    from rich.table import Table

    from cxr.client.protocol import Result

FORMATS: tuple[str, ...] = get_args(Format)
RESUMABLE = ("json", "jsonl", "csv")
COLUMNS = (
    "source",
    "sha256",
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
#: The columns with ``--heatmaps``: the path of each input's overlay PNG added, and where the
#: map is hottest (fractions of the image's width and height from its top-left corner).
HEATMAP_COLUMN = "heatmap_file"
HOT_SPOT_COLUMNS = ("hot_spot_x", "hot_spot_y")
HEATMAP_COLUMNS = (*COLUMNS, HEATMAP_COLUMN, *HOT_SPOT_COLUMNS)
#: Width of a table written to a file or a pipe.
TABLE_WIDTH = 200
#: Longest time a flushed row may wait for ``fsync``.
SYNC_EVERY = 1.0

Row = dict[str, Any]


class ResumeError(ValueError):
    """An existing output file that is not a result file of the format asked for."""


class OutputError(ValueError):
    """``--out`` cannot be used as asked (held by another run, holds rows, not a file)."""


def claim_output(path: Path, resume: bool, overwrite: bool) -> tuple[Path, int]:
    """The file to write for ``--out path`` (a symlink resolved to its target) and the descriptor
    of its exclusive lock, held until the process closes it or ends.

    Raises :class:`OutputError` when another run holds the lock, when the target is not a regular
    file, or when it already holds rows and neither ``resume`` nor ``overwrite`` is given.
    """
    target = path.resolve()
    if target.is_dir():
        raise OutputError(f"--out {path} is a folder; name a file")
    if target.exists() and not target.is_file():
        raise OutputError(f"--out {path} is not a regular file")
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = target.with_name(f".{target.name}.lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fd).st_ino != os.stat(lock).st_ino:  # released and removed meanwhile
            raise BlockingIOError
    except (BlockingIOError, FileNotFoundError):
        os.close(fd)
        raise OutputError(f"--out {path} is being written by another run (lock {lock})") from None
    holds_rows = target.exists() and target.stat().st_size > 0
    if holds_rows and not (resume or overwrite):
        release_output(target, fd)
        raise OutputError(f"--out {path} already holds results: --resume or --overwrite")
    return target, fd


def release_output(path: Path, lock: int) -> None:
    """Remove the lock file of ``--out`` (``path`` as :func:`claim_output` returned it) and
    release the lock ``lock``."""
    path.with_name(f".{path.name}.lock").unlink(missing_ok=True)
    os.close(lock)


def content_digest(path: Path) -> str | None:
    """SHA-256 of a file's bytes, or None when it cannot be read."""
    try:
        with path.open("rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError:
        return None


def to_row(result: Result, columns: tuple[str, ...] = COLUMNS) -> Row:
    """A flat row with every column present (empty where not applicable)."""
    raw = result.as_row()
    row = dict.fromkeys(columns, "")
    row.update({k: v for k, v in raw.items() if k in columns})
    if not result.ok:
        row["error_code"], row["error"] = raw["code"], raw["message"]
    return row


def row_ok(row: Row) -> bool:
    """Whether a stored row is a success (JSON booleans or CSV strings)."""
    return row.get("ok") in (True, "True", "true", "1")


def journal_path(path: Path) -> Path:
    """Where the rows of a ``--format json`` run are journalled until the run ends."""
    return path.with_name(f".{path.name}.journal.jsonl")


def read_rows(path: Path, fmt: str, columns: tuple[str, ...] = COLUMNS) -> list[Row]:
    """Rows already in an output file (and its journal); raises :class:`ResumeError` when the
    file holds something else (for csv: other ``columns``), rather than let a new run
    overwrite it."""
    if fmt not in RESUMABLE:
        raise ValueError(f"cannot resume from format {fmt!r}")
    rows = []
    if fmt == "json":
        text = _read_text(path)
        if text.strip():
            try:
                rows = json.loads(text)
            except json.JSONDecodeError as err:
                raise ResumeError(f"{path} is not a JSON result file ({err})") from None
            if not isinstance(rows, list) or not all(_is_row(r) for r in rows):
                raise ResumeError(f"{path} is not a JSON result file (not a list of rows)")
        return rows + _read_jsonl(journal_path(path))
    if fmt == "jsonl":
        return _read_jsonl(path)
    return _read_csv(path, columns)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    except OSError as err:
        raise ResumeError(f"cannot read {path}: {err.strerror or err}") from err


def _is_row(row: object) -> bool:
    return isinstance(row, dict) and "source" in row and "ok" in row


def _complete_lines(text: str) -> list[str]:
    """Lines of ``text`` without a torn last line (one not ended by a newline)."""
    lines = text.split("\n")
    return lines[:-1]  # the part after the last newline: "" when complete, torn otherwise


def _read_jsonl(path: Path) -> list[Row]:
    rows = []
    for number, line in enumerate(_complete_lines(_read_text(path)), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not _is_row(row):
            raise ResumeError(f"{path} line {number} is not a result row: not a jsonl result file")
        rows.append(row)
    return rows


def _read_csv(path: Path, columns: tuple[str, ...]) -> list[Row]:
    text = _read_text(path)
    if not text:
        return []
    reader = csv.DictReader(io.StringIO("\n".join(_complete_lines(text)) + "\n"))
    if tuple(reader.fieldnames or ()) != columns:
        raise ResumeError(f"{path} does not have the result columns: not a csv result file")
    return [row for row in reader if row.get("source") and None not in row.values()]


def resume_plan(rows: Iterable[Row], inputs: dict[str, str | None]) -> tuple[list[Row], list[str]]:
    """Rows to keep and inputs to send, for ``inputs`` mapping each input to the SHA-256 of its
    content now (None: unreadable). An input keeps its success (once) while the row's digest is
    its digest now; inputs with changed content, an error row or none are sent again, and their
    old rows dropped. Rows of inputs not in ``inputs`` are kept as they are."""
    latest: dict[str, Row] = {}
    for row in rows:
        source = str(row["source"])
        if row_ok(row) or not row_ok(latest.get(source, {})):
            latest[source] = row
    keep = [
        row
        for source, row in latest.items()
        if source not in inputs
        or (row_ok(row) and inputs[source] is not None and row.get("sha256") == inputs[source])
    ]
    done = {str(row["source"]) for row in keep}
    return keep, [source for source in inputs if source not in done]


class RowWriter:
    """Writes rows of ``columns`` to a file or stdout in one of :data:`FORMATS`, starting with
    ``keep``."""

    def __init__(
        self,
        fmt: str,
        path: Path | None,
        keep: Iterable[Row] = (),
        columns: tuple[str, ...] = COLUMNS,
    ) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
        self.fmt = fmt
        self.path = path
        self.columns = columns
        self.rows: list[Row] = list(keep)  # the rows of a table or json, written by close()
        self._stream: IO[str] | None = None
        self._csv: csv.DictWriter | None = None
        self._synced = time.monotonic()
        if fmt in ("jsonl", "csv"):
            self._open(path)
            self.rows = []
        elif fmt == "json" and path is not None:
            self._open(journal_path(path))

    def _open(self, path: Path | None) -> None:
        """Start the stream with the header and the kept rows; a file is replaced atomically,
        so a kill leaves the old one or the new one, never fewer rows."""
        if path is None:
            self._begin(sys.stdout)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        initial = io.StringIO()
        self._begin(initial)
        write_atomic(path, initial.getvalue())
        self._stream = path.open("a", encoding="utf-8", newline="")
        if self._csv is not None:
            self._csv = csv.DictWriter(self._stream, fieldnames=self.columns, lineterminator="\n")

    def _begin(self, stream: IO[str]) -> None:
        self._stream = stream
        if self.fmt == "csv":
            self._csv = csv.DictWriter(stream, fieldnames=self.columns, lineterminator="\n")
            self._csv.writeheader()
        for row in self.rows:
            self._emit(row)
        stream.flush()

    def _emit(self, row: Row) -> None:
        assert self._stream is not None
        if self._csv is not None:
            probabilities = row["probabilities"]
            if isinstance(probabilities, dict):
                probabilities = json.dumps(probabilities)
            self._csv.writerow({**row, "probabilities": probabilities})
        else:
            self._stream.write(json.dumps(row) + "\n")

    def write(self, result: Result, source: str | None = None, **extra: str) -> None:
        """Record one result (under ``source`` when given, with ``extra`` columns); streamed and
        flushed at once for jsonl/csv (and json's journal)."""
        row = to_row(result, self.columns)
        if source is not None:
            row["source"] = source
        row.update({key: value for key, value in extra.items() if key in self.columns})
        if self.fmt in ("table", "json"):  # written at the end; streams keep nothing in memory
            self.rows.append(row)
        if self._stream is None:
            return
        self._emit(row)
        self._stream.flush()
        if self._stream is not sys.stdout and time.monotonic() - self._synced >= SYNC_EVERY:
            os.fsync(self._stream.fileno())
            self._synced = time.monotonic()

    def close(self, order: list[str] | None = None) -> None:
        """Finish the output: sync the stream; table and json are written here, in ``order``."""
        if self._stream is not None and self._stream is not sys.stdout:
            self._stream.flush()
            os.fsync(self._stream.fileno())
            self._stream.close()
        if self.fmt in ("jsonl", "csv"):
            return
        if order is not None:
            rank = {source: i for i, source in enumerate(order)}
            self.rows.sort(key=lambda row: rank.get(row["source"], len(rank)))
        if self.fmt == "json":
            text = json.dumps(self.rows, indent=2) + "\n"
            if self.path is None:
                sys.stdout.write(text)
            else:
                write_atomic(self.path, text)
                journal_path(self.path).unlink(missing_ok=True)
        else:
            render_table(self.rows, self.path)


def render_table(rows: list[Row], path: Path | None) -> None:
    """A human-readable table on stdout (or in a file)."""
    from rich.table import Table
    from rich.text import Text

    table = Table("input", "result", "P(pneumonia)", "urgent", "ms")
    for row in rows:
        source = Text(str(row["source"]), overflow="fold")
        if row_ok(row):
            table.add_row(
                source,
                Text(str(row["label"])),
                f"{float(row['pneumonia_probability']):.3f}",
                "URGENT" if row["urgent"] in (True, "True") else "",
                f"{float(row['latency_ms']):.1f}",
            )
        else:
            error = Text.assemble((f"{row['error_code']}: ", "red"), str(row["error"]))
            table.add_row(source, error, "", "", "")
    print_table(table, path)


def print_table(table: Table, path: Path | None = None) -> None:
    """Print a rich table on stdout (terminal width; one line per row when piped), or write it
    to ``path``."""
    from rich.console import Console

    if path is None:
        console = Console(highlight=False)
        if not console.is_terminal:  # piped: full paths on one line each, not 80 columns
            console = Console(highlight=False, width=TABLE_WIDTH)
        console.print(table)
    else:
        buffer = io.StringIO()
        Console(file=buffer, width=TABLE_WIDTH, highlight=False).print(table)
        write_atomic(path, buffer.getvalue())
