"""Headless Locust runs: build the command, run it, read Locust's CSV, check the SLOs."""

from __future__ import annotations

import csv
import math
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
#: Names the locustfile reports under, in the order summaries list them.
REQUEST_NAMES = ("stat", "routine", "connect", "Aggregated")
#: Seconds Locust may take beyond its run time and stop timeout to write reports and exit.
EXIT_GRACE = 60
_SPAN = re.compile(r"(\d+(?:\.\d+)?)([hms]?)")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "": 1.0}
#: What requests carry: model inputs decoded by the load generator, or the encoded files, which
#: the server's ``preprocess`` decodes (:mod:`cxr.loadtest.payloads`).
Payload = Literal["decoded", "encoded"]


def parse_duration(text: str) -> float:
    """Seconds of a Locust-style time span: ``90``, ``20s``, ``10m``, ``1h30m``."""
    parts = _SPAN.findall(text.strip().lower())
    if not parts or "".join(n + u for n, u in parts) != text.strip().lower():
        raise ValueError(f"invalid duration {text!r}: use e.g. 20s, 10m or 1h30m")
    return sum(float(number) * _UNIT[unit] for number, unit in parts)


@dataclass
class RunSettings:
    """One headless load test."""

    url: str = "localhost:8001"
    model: str | None = None
    users: int = 8
    spawn_rate: float | None = None  # users started per second; None = all within one second
    duration: float = 60.0  # seconds measured, after spawning and warm-up
    stat_fraction: float = 0.1
    images: Path | None = None
    payload: Payload = "decoded"
    html: Path | None = None
    csv_prefix: Path | None = None
    timeout: float = 10.0
    warmup: float = 2.0  # seconds of full load whose statistics are discarded

    def spawn_seconds(self) -> float:
        """How long Locust takes to start every user."""
        return self.users / self.spawn_rate if self.spawn_rate else 0.0

    def run_time(self) -> int:
        """Locust's ``--run-time`` in seconds: spawning, warm-up and the measured duration."""
        return math.ceil(self.spawn_seconds() + self.warmup + self.duration)


@dataclass
class Stats:
    """Figures of one request name (``stat``, ``routine`` or ``Aggregated``)."""

    name: str
    requests: int
    failures: int
    rps: float
    p50: float
    p95: float
    p99: float

    @property
    def error_rate(self) -> float:
        """Failures / requests (0 with no requests)."""
        return self.failures / self.requests if self.requests else 0.0

    @classmethod
    def from_latencies(
        cls, name: str, latencies_ms: Sequence[float], failures: int, seconds: float
    ) -> Stats:
        """Figures of raw response times (``failures`` of them failed) over ``seconds``."""
        from cxr.runtime.speed import latency_percentiles

        count = len(latencies_ms)
        return cls(name, count, failures, count / seconds, *latency_percentiles(latencies_ms))


@dataclass
class RunResult:
    """Statistics by request name and the distinct errors of a run."""

    stats: dict[str, Stats]
    errors: list[tuple[str, str, int]] = field(default_factory=list)  # (name, error, count)


@dataclass
class Slo:
    """Service-level objectives a run is held to."""

    p99_ms: float = 250.0
    stat_p99_ms: float = 50.0
    max_error_rate: float = 0.001

    def breaches(self, stats: dict[str, Stats]) -> list[str]:
        """Each objective missed, in words; empty when all are met."""
        found = []
        total = stats.get("Aggregated")
        if total is None or total.requests == 0:
            return ["no request completed"]
        if not total.p99 <= self.p99_ms:
            found.append(f"p99 {total.p99:.0f} ms > {self.p99_ms:g} ms")
        stat = stats.get("stat")
        if stat is not None and stat.requests and not stat.p99 <= self.stat_p99_ms:
            found.append(f"STAT p99 {stat.p99:.0f} ms > {self.stat_p99_ms:g} ms")
        if total.error_rate > self.max_error_rate:
            found.append(
                f"error rate {total.error_rate:.4f} > {self.max_error_rate:g} "
                f"({total.failures} of {total.requests} requests failed)"
            )
        return found


def locust_base_command(url: str) -> list[str]:
    """``python -m locust`` on the project's locustfile against ``url``."""
    return [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--host", url]


def locust_command(settings: RunSettings, csv_prefix: Path) -> list[str]:
    """The ``locust`` command line of a headless run."""
    command = [
        *locust_base_command(settings.url),
        "--headless",
        "-u",
        str(settings.users),
        "-r",
        str(settings.spawn_rate or settings.users),
        "-t",
        f"{settings.run_time()}s",
        "--reset-stats",
        "--csv",
        str(csv_prefix),
        "--only-summary",
        "--stop-timeout",
        str(math.ceil(settings.timeout)),
        "--exit-code-on-error",
        "0",
        "--loglevel",
        "WARNING",
    ]
    if settings.html:
        command += ["--html", str(settings.html)]
    return command


def locust_env(settings: RunSettings) -> dict[str, str]:
    """Environment read by the locustfile."""
    env = os.environ.copy()
    env["CXR_STAT_FRACTION"] = str(settings.stat_fraction)
    env["CXR_TIMEOUT"] = str(settings.timeout)
    env["CXR_WARMUP"] = str(settings.warmup)
    env["CXR_MODEL"] = settings.model or ""
    env["CXR_IMAGES"] = str(settings.images.resolve()) if settings.images else ""
    env["CXR_PAYLOAD"] = settings.payload
    return env


def read_stats(csv_prefix: Path) -> dict[str, Stats]:
    """Locust's ``PREFIX_stats.csv`` as :class:`Stats` by request name."""
    path = Path(f"{csv_prefix}_stats.csv")
    if not path.is_file():
        raise FileNotFoundError(f"Locust wrote no statistics ({path} missing)")
    stats = {}
    with path.open() as handle:
        for row in csv.DictReader(handle):
            stats[row["Name"]] = Stats(
                name=row["Name"],
                requests=int(row["Request Count"]),
                failures=int(row["Failure Count"]),
                rps=float(row["Requests/s"]),
                p50=_ms(row["50%"]),
                p95=_ms(row["95%"]),
                p99=_ms(row["99%"]),
            )
    return stats


def read_failures(csv_prefix: Path) -> list[tuple[str, str, int]]:
    """Locust's ``PREFIX_failures.csv``: (request name, error, occurrences), most frequent first."""
    path = Path(f"{csv_prefix}_failures.csv")
    if not path.is_file():
        return []
    with path.open() as handle:
        rows = [(r["Name"], r["Error"], int(r["Occurrences"])) for r in csv.DictReader(handle)]
    return sorted(rows, key=lambda row: -row[2])


def _ms(value: str) -> float:
    return float(value) if value not in ("", "N/A") else math.nan


def run_locust(settings: RunSettings) -> RunResult:
    """Run Locust headless; return its statistics and its errors."""
    with tempfile.TemporaryDirectory(prefix="cxr-locust-") as scratch:
        prefix = settings.csv_prefix or Path(scratch) / "run"
        for path in (settings.csv_prefix, settings.html):
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
        limit = settings.run_time() + settings.timeout + EXIT_GRACE
        try:
            done = subprocess.run(
                locust_command(settings, prefix),
                env=locust_env(settings),
                capture_output=True,
                text=True,
                check=False,
                timeout=limit,
            )
        except subprocess.TimeoutExpired as err:
            raise RuntimeError(f"locust did not finish within {limit:.0f} s; stopped") from err
        output = done.stdout + done.stderr
        if done.returncode != 0:
            raise RuntimeError(f"locust exited with {done.returncode}:\n{output[-3000:]}")
        return RunResult(read_stats(prefix), read_failures(prefix))
