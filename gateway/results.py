"""The JSON-lines results log for worklist integration: one row per spooled instance.

No patient attribute is written: instances and studies are named by short hashes of their UIDs.
A row is fsynced before the spool notes it as logged, and rows already in the file are never
written again, so a crash between the two leaves exactly one row after the restart.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any


class ResultsLog:
    """Append-only JSON lines, one per instance key, fsynced per row."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._keys = self._read_keys()
        self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open

    def _read_keys(self) -> set[str]:
        if not self.path.exists():
            return set()
        text = self.path.read_text(encoding="utf-8")
        if text and not text.endswith("\n"):  # a line cut by a crash: drop it, it is rewritten
            text = text[: text.rfind("\n") + 1]
            with open(self.path, "r+", encoding="utf-8") as handle:
                handle.truncate(len(text.encode("utf-8")))
        return {json.loads(line)["key"] for line in text.splitlines() if line.strip()}

    def append(self, row: dict[str, Any]) -> None:
        """Write ``row`` (which has a ``key``) unless a row for its key is already there."""
        with self._lock:
            if row["key"] in self._keys:
                return
            self._handle.write(json.dumps(row, sort_keys=True) + "\n")
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._keys.add(row["key"])

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._handle.close()
