"""Headless Locust runs: build the command, run it, read Locust's CSV, check the SLOs."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


@dataclass
class RunSettings:
    """One headless load test."""

    url: str = "localhost:8001"
    model: str | None = None
    users: int = 8
    spawn_rate: float = 8.0
    duration: str = "60s"
    stat_fraction: float = 0.1
    images: Path | None = None
    html: Path | None = None
    csv_prefix: Path | None = None
    timeout: float = 10.0


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
        if total.p99 > self.p99_ms:
            found.append(f"p99 {total.p99:.0f} ms > {self.p99_ms:.0f} ms")
        stat = stats.get("stat")
        if stat is not None and stat.requests and stat.p99 > self.stat_p99_ms:
            found.append(f"STAT p99 {stat.p99:.0f} ms > {self.stat_p99_ms:.0f} ms")
        if total.error_rate > self.max_error_rate:
            found.append(f"error rate {total.error_rate:.4f} > {self.max_error_rate}")
        return found


def locust_command(settings: RunSettings, csv_prefix: Path) -> list[str]:
    """The ``locust`` command line of a headless run."""
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        settings.url,
        "-u",
        str(settings.users),
        "-r",
        str(settings.spawn_rate),
        "-t",
        settings.duration,
        "--csv",
        str(csv_prefix),
        "--only-summary",
        "--stop-timeout",
        "5",
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
    if settings.model:
        env["CXR_MODEL"] = settings.model
    if settings.images:
        env["CXR_IMAGES"] = str(settings.images)
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


def _ms(value: str) -> float:
    return float(value) if value not in ("", "N/A") else float("nan")


def run_locust(settings: RunSettings) -> tuple[dict[str, Stats], str]:
    """Run Locust headless; return its statistics and its output."""
    with tempfile.TemporaryDirectory(prefix="cxr-locust-") as scratch:
        prefix = settings.csv_prefix or Path(scratch) / "run"
        if settings.csv_prefix:
            settings.csv_prefix.parent.mkdir(parents=True, exist_ok=True)
        if settings.html:
            settings.html.parent.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            locust_command(settings, prefix),
            env=locust_env(settings),
            capture_output=True,
            text=True,
            check=False,
        )
        output = done.stdout + done.stderr
        if done.returncode != 0:
            raise RuntimeError(f"locust exited with {done.returncode}:\n{output[-3000:]}")
        return read_stats(prefix), output
