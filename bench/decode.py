"""The project's decode path against the straightforward one, on full-size radiographs it
generates (``cxr bench decode``)."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def bench_decode(
    syntaxes: list[str],
    size: int,
    count: int,
    repeat: int,
    say: Callable[[str], object] = lambda _: None,
) -> list[dict]:
    """One row per (syntax, bits stored): read / fast / reference ms per image and MP/s."""
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
                timings = {
                    "read": _median(lambda p=path: p.read_bytes(), repeat),
                    "fast": _median(lambda p=path: load_model_input(p.read_bytes(), size), repeat),
                    "reference": _median(
                        lambda p=path: reference_model_input(p.read_bytes(), size), repeat
                    ),
                    "mp": image.rows * image.columns / 1e6,
                    "mb": len(image.data) / 2**20,
                }
                groups.setdefault(image.bits, []).append(timings)
            rows += [_row(name, bits, timings) for bits, timings in sorted(groups.items())]
    return rows


def _median(call: Callable[[], object], repeat: int) -> float:
    call()  # warm: imports, page cache
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _row(name: str, bits: int, timings: list[dict[str, float]]) -> dict:
    def mean(key: str) -> float:
        return statistics.fmean(t[key] for t in timings)

    mp, read, fast, reference = mean("mp"), mean("read"), mean("fast"), mean("reference")
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
    }
