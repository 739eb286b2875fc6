"""An INT8 variant chosen by the accuracy gate: the calibration method (minmax, entropy,
percentile) whose model the gate judges best, then, if even that one fails, the fewest layers
kept in float that make it pass (:mod:`convert.precision`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cxr.convert.gate import Assessment
from cxr.convert.precision import SearchResult, search
from cxr.convert.quantize import (
    CalibrationReader,
    float_nodes,
    layer_labels,
    quantize_int8,
    quantized_layers,
)


def cache_path(work: Path, method: str) -> Path:
    """The calibration cache of ``method``: ranges computed once per conversion and method."""
    return work / f"calibration_{method}.json"


@dataclass
class Int8Result:
    """The INT8 model chosen for one flavour, and how it was chosen."""

    path: Path
    assessment: Assessment
    method: str
    tried: dict[str, Assessment]  # calibration method -> its fully quantized model's assessment
    full_path: Path  # the fully quantized model of ``method``
    search: SearchResult | None  # None: not searched (the full model passed, or search is off)
    labels: dict[str, str] = field(default_factory=dict)  # layer -> op type and parameter

    @property
    def keep_float(self) -> tuple[str, ...]:
        """Layers kept in float in :attr:`path` (besides pre- and post-processing)."""
        return self.search.keep_float if self.search and self.search.passed else ()

    def precision(self) -> dict:
        """What to record in the model's card: calibration and the layers kept in float."""
        return {
            "calibration_method": self.method,
            "float_layers": list(self.keep_float),
            "float_layer_labels": [self.labels.get(name, "") for name in self.keep_float],
        }


def make_int8(
    prepared: Path,
    work: Path,
    name: str,
    flavour: str,
    reader: CalibrationReader,
    methods: tuple[str, ...],
    judge: Callable[[Path], Assessment],
    repair: bool,
) -> Int8Result:
    """Quantize ``prepared`` with each of ``methods``, keep the one the gate judges best (passing
    first, then the smallest worst loss bound), and repair it per layer when it fails and
    ``repair`` is set."""
    import onnx

    tried: dict[str, tuple[Path, Assessment]] = {}
    for method in methods:
        path = work / f"model_{name}_{method}.onnx"
        quantize_int8(prepared, path, reader, flavour, method, cache_path(work, method))
        tried[method] = (path, judge(path))
    method = min(methods, key=lambda m: (not tried[m][1].passed, tried[m][1].worst))
    full_path, full = tried[method]
    result = Int8Result(
        full_path, full, method, {m: a for m, (_, a) in tried.items()}, full_path, None
    )
    if full.passed or not repair:
        return result

    def quantizer(keep: tuple[str, ...], dst: Path) -> Path:
        cache = cache_path(work, method)
        return quantize_int8(prepared, dst, reader, flavour, method, cache, keep)

    source = onnx.load(str(prepared), load_external_data=False)
    outside = set(float_nodes(source))
    quantized = quantized_layers(onnx.load(str(full_path), load_external_data=False))
    layers = [name for name in quantized if name not in outside]
    result.labels = layer_labels(source, layers)
    result.search = search(layers, quantizer, judge, work / f"search_{name}")
    if result.search.passed:
        result.path, result.assessment = result.search.path, result.search.assessment
    return result
