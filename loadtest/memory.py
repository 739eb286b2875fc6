"""Server memory and CPU during a load test: RSS and CPU time of a process and everything it
started, read with psutil.

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

import psutil


class ProcessGoneError(RuntimeError):
    """The sampled process no longer exists."""


def process_tree(pid: int) -> list[int]:
    """``pid``, its descendants and, when it leads a process group, the members of that group
    and their descendants."""
    if not psutil.pid_exists(pid):
        raise ProcessGoneError(f"no process {pid}")
    roots = {pid}
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pid:
                roots.add(proc.pid)
        except ProcessLookupError:
            continue
    tree = set(roots)
    for root in roots:
        try:
            tree |= {child.pid for child in psutil.Process(root).children(recursive=True)}
        except psutil.NoSuchProcess:
            continue
    return sorted(tree)


def _sum(pids: list[int], measure: str) -> float:
    total = 0.0
    for pid in pids:
        try:
            process = psutil.Process(pid)
            if measure == "rss":
                total += process.memory_info().rss
            else:
                times = process.cpu_times()
                total += times.user + times.system
        except psutil.NoSuchProcess:  # ended meanwhile: counts 0
            continue
    return total


def rss_bytes(pids: list[int]) -> int:
    """Sum of the resident set sizes of ``pids`` (processes that ended meanwhile count 0)."""
    return int(_sum(pids, "rss"))


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) used so far by the live processes of ``pid``'s tree."""
    return _sum(process_tree(pid), "cpu")


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
