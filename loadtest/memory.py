"""Server memory during a load test: RSS of a process and everything it started, from /proc.

``tritonserver`` runs each Python-backend model instance in a stub process of its own, so the
server's footprint is the sum over its process tree (and its process group, which the embedded
server leads). Growth is judged after a warm-up, when the arenas have reached their working size.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class ProcessGoneError(RuntimeError):
    """The sampled process no longer exists."""


def _stat_fields(pid: int) -> tuple[int, int] | None:
    """(parent pid, process group) of ``pid``, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces or parentheses: parse after its last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[2])


def process_tree(pid: int) -> list[int]:
    """``pid``, its descendants and, when it leads a process group, the members of that group."""
    if _stat_fields(pid) is None:
        raise ProcessGoneError(f"no process {pid}")
    parents: dict[int, int] = {}
    group: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        found = _stat_fields(int(entry.name))
        if found is None:
            continue
        parents[int(entry.name)] = found[0]
        if found[1] == pid:
            group.add(int(entry.name))
    tree = {pid} | group
    grew = True
    while grew:
        children = {child for child, parent in parents.items() if parent in tree} - tree
        tree |= children
        grew = bool(children)
    return sorted(tree)


def rss_bytes(pids: list[int]) -> int:
    """Sum of the resident set sizes of ``pids`` (processes that ended meanwhile count 0)."""
    total = 0
    for pid in pids:
        try:
            resident = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
        total += resident * PAGE_SIZE
    return total


@dataclass
class RssSample:
    """One reading: seconds since sampling began, total RSS, processes counted."""

    elapsed: float
    rss: int
    processes: int


@dataclass
class RssReport:
    """Memory over a run: the level after warm-up, at the end, the peak and the growth."""

    warmup: float
    samples: list[RssSample]
    baseline: int = field(init=False)
    final: int = field(init=False)
    peak: int = field(init=False)

    def __post_init__(self) -> None:
        after = [s for s in self.samples if s.elapsed >= self.warmup] or self.samples[-1:]
        if not after:
            raise ValueError("no RSS sample was taken")
        # Median of the first and last tenth after warm-up: one batch in flight does not count.
        window = max(1, len(after) // 10)
        self.baseline = int(statistics.median(s.rss for s in after[:window]))
        self.final = int(statistics.median(s.rss for s in after[-window:]))
        self.peak = max(s.rss for s in after)

    @property
    def growth(self) -> float:
        """Relative growth from the post-warm-up level to the end (0.05 = 5 %)."""
        return self.final / self.baseline - 1 if self.baseline else 0.0

    @property
    def processes(self) -> int:
        """Processes counted in the last sample."""
        return self.samples[-1].processes


class RssSampler:
    """Samples the RSS of a process tree in a background thread (a context manager)."""

    def __init__(self, pid: int, interval: float = 1.0) -> None:
        process_tree(pid)  # fails now, clearly, when there is no such process
        self.pid = pid
        self.interval = interval
        self.samples: list[RssSample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{pid}", daemon=True)
        self._started = 0.0

    def _run(self) -> None:
        while True:
            try:
                pids = process_tree(self.pid)
            except ProcessGoneError:
                return
            elapsed = time.monotonic() - self._started
            self.samples.append(RssSample(elapsed, rss_bytes(pids), len(pids)))
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> RssSampler:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def report(self, warmup: float) -> RssReport:
        """Figures of the samples taken so far (raises ValueError when there are none)."""
        return RssReport(warmup, list(self.samples))
