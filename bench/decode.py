"""The project's decode path against the straightforward one, on full-size radiographs it
generates (``cxr bench decode``)."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def machine_isa() -> str:
    """The widest x86 vector extensions of this CPU that matter to numpy and Pillow."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return "unknown"
    found = [name for name in ("avx512_vnni", "avx512f", "avx2") if name in flags]
    return "+".join(found) or "no AVX2"


def machine() -> str:
    """The ISA and the load average, printed with the figures (they move them)."""
    return f"ISA {machine_isa()}, load average {os.getloadavg()[0]:.1f}"


def bench_decode(
    syntaxes: list[str],
    size: int,
    count: int,
    repeat: int,
    say: Callable[[str], object] = lambda _: None,
) -> list[dict]:
    """One row per (syntax, bits stored): read / fast / reference ms per image and MP/s, and
    the fast path on the same pixels stored uncompressed (what no codec can save), so
    ``ceiling`` is the speed-up of a codec that cost nothing."""
    from cxr.bench.decode_corpus import corpus, reference_model_input
    from cxr.client.imaging import load_model_input

    rows = []
    with tempfile.TemporaryDirectory(prefix="cxr-bench-decode-") as folder:
        for name in syntaxes:
            say(f"generating {count} {name} radiographs ...")
            images = corpus([name], count)
            groups: dict[int, list[dict[str, float]]] = {}
            for image in images:
                path = Path(folder) / f"{image.name}.dcm"
                path.write_bytes(image.data)
                plain = Path(folder) / f"{image.name}-uncompressed.dcm"
                plain.write_bytes(image.uncompressed)
                timings = _interleaved(
                    {
                        "read": lambda p=path: p.read_bytes(),
                        "fast": lambda p=path: load_model_input(p.read_bytes(), size),
                        "uncompressed": lambda p=plain: load_model_input(p.read_bytes(), size),
                        "reference": lambda p=path: reference_model_input(p.read_bytes(), size),
                    },
                    repeat,
                )
                timings["mp"] = image.rows * image.columns / 1e6
                timings["mb"] = len(image.data) / 2**20
                groups.setdefault(image.bits, []).append(timings)
            rows += [_row(name, bits, timings) for bits, timings in sorted(groups.items())]
    return rows


def _interleaved(calls: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Median seconds of each call, the calls taking turns (a load that comes and goes on shared
    cores weighs on every side alike)."""
    for call in calls.values():
        call()  # warm: imports, page cache
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeat):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def _row(name: str, bits: int, timings: list[dict[str, float]]) -> dict:
    def mean(key: str) -> float:
        return statistics.fmean(t[key] for t in timings)

    mp, read, fast, reference = mean("mp"), mean("read"), mean("fast"), mean("reference")
    uncompressed = mean("uncompressed")
    return {
        "syntax": name,
        "bits": bits,
        "images": len(timings),
        "MP/image": round(mp, 2),
        "MB/file": round(mean("mb"), 2),
        "read ms": round(read * 1e3, 2),
        "fast ms": round(fast * 1e3, 1),
        "reference ms": round(reference * 1e3, 1),
        "speed-up": round(reference / fast, 1),
        "fast MP/s": round(mp / fast, 1),
        "reference MP/s": round(mp / reference, 1),
        "fast / read": round(fast / read, 1),
        "uncompressed ms": round(uncompressed * 1e3, 1),
        "ceiling": round(reference / uncompressed, 1),
    }
