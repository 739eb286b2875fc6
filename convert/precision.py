"""Automatic per-layer precision: the fewest compute layers to keep in float for an INT8 model to
pass the accuracy gate.

1. Sensitivity: each quantizable layer is quantized *alone* (every other one in float) and gated;
   its score is the gate's worst loss bound over its limit (:attr:`convert.gate.Assessment.worst`).
2. Bisection over the layers ranked by that score: the shortest prefix whose float copy makes the
   model pass (the search polygraphy's ``debug precision`` makes, on a ranked order).
3. Pruning: each kept layer, least sensitive first, is quantized again if the model still passes
   without it, so the set returned is minimal (no single layer can be dropped from it).

Every trial is a real quantized model gated on the real gate set; the calibrated ranges are reused
(``calibration_cache_path``), so a trial costs one quantization and one gate run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cxr.convert.gate import Assessment

#: ``(layers kept in float, destination) -> the quantized model's path``.
Quantizer = Callable[[tuple[str, ...], Path], Path]
#: ``model path -> its gate assessment``.
Judge = Callable[[Path], Assessment]


@dataclass
class SearchResult:
    """What the search found and what it tried."""

    keep_float: tuple[str, ...]  # empty with ``passed`` False: no set of layers passes
    passed: bool
    path: Path | None  # the passing mixed model
    assessment: Assessment | None
    sensitivity: dict[str, float] = field(default_factory=dict)  # layer -> worst loss / limit
    trials: int = 0

    def as_dict(self) -> dict:
        """JSON-ready form (without the assessment, reported separately)."""
        return {
            "keep_float": list(self.keep_float),
            "passed": self.passed,
            "sensitivity": self.sensitivity,
            "trials": self.trials,
        }


def search(layers: list[str], quantize: Quantizer, judge: Judge, work: Path) -> SearchResult:
    """The smallest set of ``layers`` to keep in float for the model to pass (see the module);
    called when the fully quantized model fails."""
    work.mkdir(parents=True, exist_ok=True)
    trials = 0
    best: dict[tuple[str, ...], tuple[Path, Assessment]] = {}

    def trial(keep: tuple[str, ...]) -> Assessment:
        nonlocal trials
        keep = tuple(name for name in layers if name in set(keep))  # graph order: one cache key
        if keep not in best:
            trials += 1
            path = quantize(keep, work / f"trial_{trials}.onnx")
            best[keep] = (path, judge(path))
            if not best[keep][1].passed:
                path.unlink()  # only a passing model can be the answer
        return best[keep][1]

    sensitivity = {
        name: trial(tuple(other for other in layers if other != name)).worst for name in layers
    }
    ranked = sorted(layers, key=lambda name: -sensitivity[name])
    if not trial(tuple(ranked)).passed:
        return SearchResult((), False, None, None, sensitivity, trials)
    low, high = 0, len(ranked)  # prefix of length high passes; low is not known to pass
    while high - low > 1:
        middle = (low + high) // 2
        if trial(tuple(ranked[:middle])).passed:
            high = middle
        else:
            low = middle
    keep = list(ranked[:high])
    for name in sorted(keep, key=lambda n: sensitivity[n]):
        fewer = tuple(n for n in keep if n != name)
        if fewer and trial(fewer).passed:
            keep.remove(name)
    final = tuple(name for name in layers if name in set(keep))
    path, assessment = best[final]
    for other, _ in best.values():
        if other != path:
            other.unlink(missing_ok=True)
    return SearchResult(final, True, path, assessment, sensitivity, trials)
