"""``cxr loadtest sweep``: what Triton Model Analyzer does, for this deployment.

Each configuration of a grid (max batch size, queue delay, instance count, onnxruntime threads) is
written into a scratch copy of the classifier's folder and served by a real ``tritonserver``; the
closed-loop generator measures throughput and p99 at each concurrency asked. The best point that
meets the p99 objective without errors is written back into the repository (unless dry-run).
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cxr.client import contract
from cxr.loadtest.baseline import BaselineSettings, discover, run_baseline
from cxr.loadtest.runner import Stats
from cxr.server.repository import (
    CONFIG_FILE,
    Classifier,
    Scheduling,
    classifier_config,
    classifiers_in,
    config_text,
    deployed_model,
    publish_classifier,
    publish_front,
)
from cxr.server.triton import ServerConfig, ServerError, TritonServer

TABLE_FILE = "sweep.csv"
PLOT_FILE = "sweep.png"


@dataclass
class Grid:
    """Values tried for each setting; every combination is one configuration."""

    batch_sizes: list[int]
    delays_us: list[int]
    instances: list[int]
    threads: list[int]

    def configurations(self, base: Scheduling) -> list[Scheduling]:
        """``base`` with each combination of the grid's values applied."""
        return [
            dataclasses.replace(
                base, max_batch_size=b, max_queue_delay_us=d, instances=i, threads=t
            )
            for b, d, i, t in itertools.product(
                self.batch_sizes, self.delays_us, self.instances, self.threads
            )
        ]


@dataclass
class Point:
    """One configuration at one concurrency: its figures, or why it could not be measured."""

    scheduling: Scheduling
    users: int
    stats: Stats | None = None
    error: str = ""

    @property
    def label(self) -> str:
        """Short name, e.g. ``b32 d500 i1 t2 u8``."""
        s = self.scheduling
        return (
            f"b{s.max_batch_size} d{s.max_queue_delay_us} i{s.instances} t{s.threads} u{self.users}"
        )

    def meets(self, slo_p99_ms: float) -> bool:
        """Measured, no failed request and p99 within the objective."""
        return (
            self.stats is not None
            and self.stats.requests > 0
            and self.stats.failures == 0
            and self.stats.p99 <= slo_p99_ms
        )


def find_classifier(repo: Path, model: str) -> Classifier:
    """The CPU classifier ``model`` of ``repo``; the ensemble's name means its deployed model."""
    if model == contract.ENSEMBLE_MODEL and (repo / model / CONFIG_FILE).is_file():
        model = deployed_model(repo)
    found = {c.name: c for c in classifiers_in(repo) if not c.tensorrt}
    if model not in found:
        raise ValueError(
            f"{repo}: no CPU classifier {model!r} to tune (found: {sorted(found) or 'none'})"
        )
    return found[model]


def measure(
    repo: Path,
    clf: Classifier,
    scheduling: Scheduling,
    users: list[int],
    settings: BaselineSettings,
) -> list[Point]:
    """Serve ``clf`` under ``scheduling`` from the scratch ``repo`` and measure each concurrency."""
    (repo / clf.name / CONFIG_FILE).write_text(config_text(classifier_config(clf, scheduling)))
    config = ServerConfig.on_free_ports(repo)
    try:
        with TritonServer(config) as server:
            failed = server.failed_models()
            if failed:
                reason = "; ".join(f"{name}: {why}" for name, why in failed.items())
                return [Point(scheduling, n, error=reason[:200]) for n in users]
            points, target = [], None  # the payloads are read from this server once
            for n in users:
                run = dataclasses.replace(settings, url=server.grpc_url, model=clf.name, users=n)
                try:
                    target = target or discover(run)
                    stats = run_baseline(run, target).stats["Aggregated"]
                    points.append(Point(scheduling, n, stats))
                except Exception as err:  # e.g. the server died: recorded, the sweep goes on
                    points.append(Point(scheduling, n, error=f"not measured: {err}"[:200]))
            return points
    except ServerError as err:
        return [Point(scheduling, n, error=str(err).splitlines()[0][:200]) for n in users]


def run_sweep(
    repo: Path,
    clf: Classifier,
    configurations: list[Scheduling],
    users: list[int],
    settings: BaselineSettings,
    progress: Callable[[Point], None] = lambda point: None,
) -> list[Point]:
    """Measure every configuration at every concurrency on a scratch copy of the model."""
    points = []
    with tempfile.TemporaryDirectory(prefix="cxr-sweep-") as scratch:
        copy = Path(scratch) / "repo"
        shutil.copytree(repo / clf.name, copy / clf.name)
        for scheduling in configurations:
            for point in measure(copy, clf, scheduling, users, settings):
                progress(point)
                points.append(point)
    return points


def best_point(points: list[Point], slo_p99_ms: float) -> Point | None:
    """Highest throughput among the points that meet the objective (lower p99 breaks ties)."""
    good = [p for p in points if p.meets(slo_p99_ms)]
    if not good:
        return None
    return max(good, key=lambda p: (p.stats.rps, -p.stats.p99))  # type: ignore[union-attr]


def apply_best(repo: Path, clf: Classifier, scheduling: Scheduling) -> Path:
    """Write ``scheduling`` into the repository's config of ``clf``; when the ensemble routes to
    it, rewrite ``preprocess`` and the ensemble too (their max batch size follows)."""
    folder = publish_classifier(repo, clf, scheduling, keep_tuning=False)
    ensemble = repo / contract.ENSEMBLE_MODEL / CONFIG_FILE
    if ensemble.is_file() and deployed_model(repo) == clf.name:
        publish_front(repo, clf)
    return folder / CONFIG_FILE


COLUMNS = (
    "batch",
    "delay_us",
    "instances",
    "threads",
    "users",
    "req_s",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "requests",
    "failures",
    "meets_slo",
    "error",
)


#: Short headers of the printed table (the CSV has every column).
HEADERS = (
    "batch",
    "delay µs",
    "inst",
    "thr",
    "users",
    "req/s",
    "p50",
    "p95",
    "p99",
    "n",
    "fail",
    "SLO",
)


def table_rows(points: list[Point], slo_p99_ms: float) -> list[dict[str, object]]:
    """One dict per point, keyed by :data:`COLUMNS`."""
    rows = []
    for p in points:
        s, st = p.scheduling, p.stats
        rows.append(
            {
                "batch": s.max_batch_size,
                "delay_us": s.max_queue_delay_us,
                "instances": s.instances,
                "threads": s.threads,
                "users": p.users,
                "req_s": round(st.rps, 1) if st else "",
                "p50_ms": round(st.p50, 1) if st else "",
                "p95_ms": round(st.p95, 1) if st else "",
                "p99_ms": round(st.p99, 1) if st else "",
                "requests": st.requests if st else 0,
                "failures": st.failures if st else 0,
                "meets_slo": p.meets(slo_p99_ms),
                "error": p.error,
            }
        )
    return rows


def write_table(rows: list[dict[str, object]], path: Path) -> None:
    """The sweep's table as CSV."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def plot(points: list[Point], slo_p99_ms: float, best: Point | None, path: Path) -> None:
    """Throughput against p99, one marker per point, the objective as a line, the best ringed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [p for p in points if p.stats is not None and p.stats.requests]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for p in measured:
        colour = "tab:green" if p.meets(slo_p99_ms) else "tab:red"
        ax.scatter(p.stats.rps, p.stats.p99, color=colour, s=30)  # type: ignore[union-attr]
        ax.annotate(
            p.label,
            (p.stats.rps, p.stats.p99),
            fontsize=6,  # type: ignore[union-attr]
            xytext=(3, 3),
            textcoords="offset points",
        )
    if best is not None and best.stats is not None:
        ax.scatter(
            best.stats.rps,
            best.stats.p99,
            s=160,
            facecolors="none",
            edgecolors="black",
            label=f"best: {best.label}",
        )
    ax.axhline(slo_p99_ms, color="grey", linestyle="--", label=f"p99 SLO {slo_p99_ms:g} ms")
    ax.set_xlabel("throughput (requests/s)")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_title("cxr loadtest sweep: throughput vs p99")
    ax.set_ylim(bottom=0)
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
