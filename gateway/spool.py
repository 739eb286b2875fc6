"""The spool: received instances, reports waiting to be sent, and the state of each.

Layout of ``DIR``: ``instances/<key>.dcm`` (each received instance as a DICOM file),
``outbox/<key>.dcm`` (its Structured Report), ``state.sqlite`` (one row per instance) and, unless
told otherwise, ``results.jsonl``. ``key`` hashes the SOP Instance UID with the content digest, so
a re-sent identical instance maps onto the row it already has. Files are fsynced (file and folder)
and state rows committed with SQLite's ``synchronous=FULL`` before anything is acknowledged.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxr.client.files import write_atomic

STATE_FILE = "state.sqlite"
INSTANCES = "instances"
OUTBOX = "outbox"

#: Triage states: waiting for the server, done (a result), or refused (bad input).
RECEIVED, TRIAGED, FAILED = "received", "triaged", "failed"
#: Report states: waiting to be sent, sent, not forwarded (no ``--forward``), given up.
SR_PENDING, SR_FORWARDED, SR_KEPT, SR_FAILED = "pending", "forwarded", "kept", "failed"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    key TEXT PRIMARY KEY,
    sop_uid TEXT NOT NULL,
    sop_class TEXT NOT NULL,
    digest TEXT NOT NULL,
    calling_ae TEXT NOT NULL,
    priority TEXT NOT NULL,
    received_at REAL NOT NULL,
    copies INTEGER NOT NULL DEFAULT 1,
    state TEXT NOT NULL,
    error_code TEXT,
    row TEXT,
    logged INTEGER NOT NULL DEFAULT 0,
    sr_state TEXT,
    sr_error TEXT,
    forward_tries INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS by_state ON instances (state, priority, received_at);
"""


def instance_key(sop_uid: str, digest: str) -> str:
    """The spool's name for one SOP Instance with one content."""
    return hashlib.sha256(f"{sop_uid}\0{digest}".encode()).hexdigest()[:32]


def uid_hash(uid: str | None) -> str | None:
    """A non-identifying handle for a UID in logs (short SHA-256)."""
    return hashlib.sha256(uid.encode()).hexdigest()[:16] if uid else None


@dataclass
class Item:
    """One spooled instance as the workers see it."""

    key: str
    sop_uid: str
    sop_class: str
    digest: str
    priority: str
    received_at: float
    path: Path


class Spool:
    """The spool folder and its state database (thread-safe)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        for folder in (INSTANCES, OUTBOX):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            self.root / STATE_FILE, check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._claimed: set[str] = set()

    def discard_partial_writes(self) -> None:
        """Delete files a crash left half-written (call before receiving, never while running)."""
        for folder in (INSTANCES, OUTBOX):
            for partial in (self.root / folder).glob(".*.tmp"):
                partial.unlink(missing_ok=True)

    def instance_path(self, key: str) -> Path:
        """Where the received instance ``key`` is stored."""
        return self.root / INSTANCES / f"{key}.dcm"

    def report_path(self, key: str) -> Path:
        """Where the Structured Report of instance ``key`` is stored."""
        return self.root / OUTBOX / f"{key}.dcm"

    # -- receiving -----------------------------------------------------------------------------
    def receive(
        self,
        sop_uid: str,
        sop_class: str,
        digest: str,
        file_bytes: bytes,
        calling_ae: str,
        priority: str,
    ) -> bool:
        """Store one instance durably; False when the same content was already spooled."""
        key = instance_key(sop_uid, digest)
        with self._lock:
            known = self._db.execute("SELECT 1 FROM instances WHERE key=?", (key,)).fetchone()
            if known:
                self._db.execute("UPDATE instances SET copies=copies+1 WHERE key=?", (key,))
                return False
        write_atomic(self.instance_path(key), file_bytes)
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO instances (key, sop_uid, sop_class, digest, calling_ae, "
                "priority, received_at, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (key, sop_uid, sop_class, digest, calling_ae, priority, time.time(), RECEIVED),
            )
        return True

    # -- triage --------------------------------------------------------------------------------
    def claim(self) -> Item | None:
        """The next instance to triage (STAT first, then oldest), or None."""
        with self._lock:
            rows = self._db.execute(
                "SELECT key, sop_uid, sop_class, digest, priority, received_at FROM instances "
                "WHERE state=? ORDER BY priority='stat' DESC, received_at LIMIT ?",
                (RECEIVED, len(self._claimed) + 1),
            ).fetchall()
            for key, sop_uid, sop_class, digest, priority, received_at in rows:
                if key not in self._claimed:
                    self._claimed.add(key)
                    path = self.instance_path(key)
                    return Item(key, sop_uid, sop_class, digest, priority, received_at, path)
        return None

    def release(self, key: str) -> None:
        """Give back a claimed instance (to be tried again later)."""
        with self._lock:
            self._claimed.discard(key)

    def finish(
        self, key: str, row: dict[str, Any], sr_state: str | None, sr_error: str | None = None
    ) -> None:
        """Record the result of one instance (its results-log row and its report's state)."""
        state = TRIAGED if row["ok"] else FAILED
        with self._lock:
            self._db.execute(
                "UPDATE instances SET state=?, error_code=?, row=?, sr_state=?, sr_error=? "
                "WHERE key=?",
                (state, row.get("error_code"), json.dumps(row), sr_state, sr_error, key),
            )
            self._claimed.discard(key)

    def unlogged(self) -> list[tuple[str, dict[str, Any]]]:
        """Results not yet confirmed written to the results log."""
        with self._lock:
            rows = self._db.execute(
                "SELECT key, row FROM instances WHERE logged=0 AND row IS NOT NULL"
            ).fetchall()
        return [(key, json.loads(row)) for key, row in rows]

    def mark_logged(self, key: str) -> None:
        """The result of ``key`` is in the results log."""
        with self._lock:
            self._db.execute("UPDATE instances SET logged=1 WHERE key=?", (key,))

    # -- forwarding ----------------------------------------------------------------------------
    def outbox(self) -> list[str]:
        """Keys whose report waits to be sent, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT key FROM instances WHERE sr_state=? ORDER BY received_at", (SR_PENDING,)
            ).fetchall()
        return [key for (key,) in rows]

    def forwarded(self, key: str) -> None:
        """The report of ``key`` was accepted by the destination."""
        with self._lock:
            self._db.execute(
                "UPDATE instances SET sr_state=?, sr_error=NULL WHERE key=?", (SR_FORWARDED, key)
            )

    def refused(self, key: str, error: str, give_up_after: int) -> None:
        """The destination refused the report of ``key``; give up after a few refusals."""
        with self._lock:
            self._db.execute(
                "UPDATE instances SET forward_tries=forward_tries+1, sr_error=?, "
                "sr_state=CASE WHEN forward_tries+1>=? THEN ? ELSE sr_state END WHERE key=?",
                (error, give_up_after, SR_FAILED, key),
            )

    # -- status --------------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """How many instances are in each state (see :func:`cxr.gateway.status.summary`)."""
        with self._lock:
            states = dict(self._db.execute("SELECT state, COUNT(*) FROM instances GROUP BY state"))
            reports = dict(
                self._db.execute(
                    "SELECT sr_state, COUNT(*) FROM instances WHERE sr_state IS NOT NULL "
                    "GROUP BY sr_state"
                )
            )
            copies = self._db.execute("SELECT COALESCE(SUM(copies), 0) FROM instances").fetchone()
        return {
            "received": sum(states.values()),
            "duplicates": int(copies[0]) - sum(states.values()),
            "triaged": states.get(TRIAGED, 0),
            "failed": states.get(FAILED, 0),
            "pending": states.get(RECEIVED, 0),
            "forwarded": reports.get(SR_FORWARDED, 0),
            "outbox": reports.get(SR_PENDING, 0),
            "forward_failed": reports.get(SR_FAILED, 0),
            "not_forwarded": reports.get(SR_KEPT, 0),
        }

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
