"""``cxr convert``: export, quantize, check and publish a trained run into the model repository.

FP32 ONNX (checked against PyTorch) -> INT8 (CPU flavour for onnxruntime, symmetric flavour as
TensorRT's input) and FP16 (TensorRT's input) -> accuracy gate against FP32 -> publication of the
variants that pass -> TensorRT plans where TensorRT and a GPU are present, else the engine inputs
and configs for the compose ``engines`` service -> ``convert_report.json`` / ``.md``.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from cxr.client.contract import (
    CLASSIFIER_PREFIX,
    classifier_model,
    is_tensorrt,
    tensorrt_variant,
)
from cxr.convert import gate, tensorrt
from cxr.convert.calibrate import Int8Result
from cxr.convert.export import (
    Parity,
    contract_problems,
    embed_card,
    export_onnx,
    has_heatmap,
    heatmap_agreement,
    torch_parity,
)
from cxr.convert.gateset import PERTURBATIONS, GateSet, base_images, with_perturbations
from cxr.convert.paired import CONFIDENCE
from cxr.convert.quantize import CalibrationReader
from cxr.convert.report import write_report
from cxr.runtime.engines import stamp_path
from cxr.server.repository import (
    CONFIG_FILE,
    ONNX_FILE,
    PLAN_FILE,
    VERSION,
    Classifier,
    Scheduling,
    deployable,
    publish_classifier,
    publish_front,
)
from cxr.train.card import ModelCard
from cxr.train.data import SPLIT_NAMES, TrainingData, fingerprint, load_split, load_training_data

PARITY_IMAGES = 32
#: Clean gate images on which each variant's ``HEATMAP`` is compared with FP32's (report only).
HEATMAP_IMAGES = 256
PRECISIONS = ("fp32", "int8", "fp16")
TENSORRT_MODES = ("auto", "on", "off")
#: What each variant is, for the report.
DESCRIPTIONS = {
    "fp32": "FP32 reference (onnxruntime CPU)",
    "int8": "INT8 QDQ, uint8 activations, int8 per-channel weights (onnxruntime CPU)",
    tensorrt_variant("int8"): (
        "INT8 QDQ symmetric: int8 activations (zero point 0), int8 per-channel weights "
        "(TensorRT input)"
    ),
    tensorrt_variant("fp16"): "FP16 weights and arithmetic, float32/uint8 I/O (TensorRT input)",
}
#: Beside the model folder, as docker/build_engines.sh keeps it.
TIMING_CACHE = "timing.cache"
ENGINES_HINT = "build it with `docker compose run --rm engines` (docker/build_engines.sh)"


class ConversionError(RuntimeError):
    """A conversion step failed its check; nothing was published for that variant."""


@dataclass
class ConvertOptions:
    """Everything ``cxr convert`` can be told besides the run and the repository."""

    precisions: tuple[str, ...] = PRECISIONS
    calib_data: Path | None = None  # dataset whose train split calibrates INT8 (default: run's)
    calib_size: int = 512
    calib_method: str = "auto"  # or one of CALIBRATION_METHODS; auto: chosen by the gate
    gate_data: Path | None = None  # dataset that gates (default: see convert.gateset)
    gate_split: str | None = None  # its split (default: its validation split)
    perturbations: tuple[str, ...] = PERTURBATIONS  # acquisition shifts gated besides clean
    precision_search: bool = True  # repair a failing INT8 by keeping layers in float
    tensorrt: str = "auto"
    max_batch: int = 64
    allow_accuracy_drop: bool = False
    report_dir: Path | None = None  # default: the run directory
    bench_seconds: float = 1.0  # per variant and batch size; 0 = no speed measurement
    bench_batches: tuple[int, ...] = (1, 8)
    seed: int = 0

    def check(self) -> None:
        """Raise ValueError naming the first bad option."""
        from cxr.convert.quantize import CALIBRATION_METHODS

        unknown = sorted(set(self.precisions) - set(PRECISIONS))
        if unknown or not self.precisions:
            raise ValueError(f"--precision: unknown {unknown}; choose from {', '.join(PRECISIONS)}")
        if self.calib_method not in ("auto", *CALIBRATION_METHODS):
            raise ValueError(
                f"--calib-method {self.calib_method!r}: choose auto, "
                f"{', '.join(CALIBRATION_METHODS)}"
            )
        if self.gate_split is not None and self.gate_split not in SPLIT_NAMES:
            raise ValueError(f"--gate-split {self.gate_split!r}: choose {', '.join(SPLIT_NAMES)}")
        bad = sorted(set(self.perturbations) - set(PERTURBATIONS))
        if bad:
            raise ValueError(f"--perturb: unknown {bad}; choose from {', '.join(PERTURBATIONS)}")
        if self.gate_split is not None and self.gate_data is None:
            raise ValueError("--gate-split needs --gate-data")
        if self.tensorrt not in TENSORRT_MODES:
            raise ValueError(f"--tensorrt {self.tensorrt!r}: choose {', '.join(TENSORRT_MODES)}")
        for name in ("calib_size", "max_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        for path in (self.calib_data, self.gate_data):
            if path is not None and not path.exists():
                raise ValueError(f"dataset not found: {path}")


@dataclass
class Variant:
    """One model file made from the run, and what became of it."""

    name: str
    path: Path
    assessment: gate.Assessment | None = None
    int8: Int8Result | None = None
    record: dict = field(default_factory=dict)

    @property
    def tensorrt(self) -> bool:
        """Whether it is a TensorRT engine input."""
        return is_tensorrt(self.name)


def convert_run(
    run_dir: Path, repo: Path, work_dir: Path | None = None, options: ConvertOptions | None = None
) -> dict:
    """Convert the run in ``run_dir``, gate every variant against FP32, publish into ``repo``.

    Returns the report (also written as ``convert_report.json`` and ``.md``).
    """
    from cxr.train.models import load_trained

    opts = options or ConvertOptions()
    opts.check()
    trt_missing = tensorrt.unavailable() if opts.tensorrt != "off" else "--tensorrt off"
    if opts.tensorrt == "on" and trt_missing:
        raise ConversionError(f"--tensorrt on, but TensorRT engines cannot be built: {trt_missing}")
    model, card = load_trained(run_dir)
    work = work_dir or run_dir / "onnx"
    wanted = _wanted_variants(opts)
    gate_set, calib, calib_source = _load_images(card, opts, wanted)  # labels checked there

    fp32 = Variant("fp32", export_onnx(model, card, work / "model_fp32.onnx"))
    clean = gate_set.conditions["clean"]
    parity: list[Parity] = torch_parity(model, fp32.path, clean[:PARITY_IMAGES])
    for check in parity:
        if not check.ok:
            raise ConversionError(
                f"FP32 ONNX differs from PyTorch by {check.max_abs_diff:.2e} on {check.output} "
                f"(limit {check.limit:.0e}); not published"
            )
    reference = gate.model_scores(fp32.path, gate_set)

    def judge(path: Path) -> gate.Assessment:
        scores = gate.model_scores(path, gate_set)
        return gate.assess(gate_set.labels, reference, scores, card.threshold)

    fp32.assessment = gate.assess(gate_set.labels, reference, reference, card.threshold)
    reader = CalibrationReader(calib)
    decidable = gate.decidable(gate_set.labels)
    repair = opts.precision_search and decidable
    variants = [
        fp32,
        *_make_variants(fp32.path, work, card, wanted, reader, opts, judge, decidable),
    ]
    for variant in variants:
        _record(variant)
        if variant is not fp32:
            variant.record["heatmap_vs_fp32"] = heatmap_agreement(
                fp32.path, variant.path, clean[:HEATMAP_IMAGES]
            )
    _bench_cpu(variants, opts)
    card_dict = {**asdict(card), "positive_class": card.positive_class}
    published = _publish(repo, variants, card_dict, opts, trt_missing)
    deployed = deployable([c for c in published if not c.tensorrt])
    publish_front(repo, deployed)
    removed = _remove_others(repo, {c.name for c in published})
    report = {
        "run_dir": str(run_dir),
        "repo": str(repo),
        "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "card": {k: card_dict[k] for k in ("arch", "classes", "image_size", "threshold")},
        "parity": [check.as_dict() for check in parity],
        "calibration": {
            "source": calib_source,
            "images": reader.count,
            "requested": opts.calib_size,
            "method": opts.calib_method
            + (
                ""
                if decidable or opts.calib_method != "auto"
                else " (minmax: the gate set is too small to choose)"
            ),
        },
        "gate": {
            "source": gate_set.source,
            "kind": gate_set.kind,
            "images": len(gate_set),
            "positives": int((gate_set.labels != 0).sum()),
            "negatives": int((gate_set.labels == 0).sum()),
            "conditions": list(gate_set.conditions),
            "confidence": CONFIDENCE,
            "limits": gate.LIMITS,
            "notes": gate_set.notes + gate.adequacy(gate_set.labels, reference, card.threshold),
            "allow_accuracy_drop": opts.allow_accuracy_drop,
            "precision_search": (
                "on"
                if repair
                else "off (--no-precision-search)"
                if not opts.precision_search
                else "skipped: the gate set is too small for any variant to pass"
            ),
            "evaluated_with": "onnxruntime CPU for every variant; the TensorRT variants' ONNX "
            "inputs run there as a proxy for their engines",
        },
        "tensorrt": {"mode": opts.tensorrt, "unavailable": trt_missing},
        "not_made": _not_made(opts),
        "variants": [v.record for v in variants],
        "published": [c.name for c in published],
        "deployed": deployed.name,
        "removed_from_repo": removed,
    }
    report["files"] = [str(p) for p in write_report(report, opts.report_dir or run_dir)]
    return report


def _wanted_variants(opts: ConvertOptions) -> list[str]:
    wanted = []
    if "int8" in opts.precisions:
        wanted.append("int8")
    if opts.tensorrt != "off":
        wanted += [tensorrt_variant(p) for p in ("int8", "fp16") if p in opts.precisions]
    return wanted


def _quantized(wanted: list[str]) -> bool:
    """Whether any wanted variant is INT8 (and so needs calibration)."""
    return bool({"int8", tensorrt_variant("int8")} & set(wanted))


def _not_made(opts: ConvertOptions) -> dict[str, str]:
    if opts.tensorrt != "off":
        return {}
    return {
        classifier_model(tensorrt_variant(p)): "--tensorrt off: no TensorRT variant is made"
        for p in ("int8", "fp16")
        if p in opts.precisions
    }


def _load_images(
    card: ModelCard, opts: ConvertOptions, wanted: list[str]
) -> tuple[GateSet, np.ndarray, str]:
    """(gate set, calibration images, their source)."""
    size, seed = card.image_size, int(card.training.get("seed", opts.seed))
    needs_calib = _quantized(wanted) and opts.calib_data is None
    run_data, run_source = None, ""
    if opts.gate_data is None or needs_calib:
        path = card.data.get("path")
        if not path:
            raise ConversionError(
                "the model card names no training data (card.data.path): "
                "pass --gate-data and --calib-data"
            )
        run_data = load_training_data(Path(path), size, seed)
        run_source = f"{path} ({_fingerprint_note(run_data, card)})"
    base, source, kind, notes = base_images(
        card, seed, opts.gate_data, opts.gate_split, run_data, run_source
    )
    gate.check_gate_labels(base.labels, source)
    gate_set = with_perturbations(
        base.labels, base.images, seed, opts.perturbations, source=source, kind=kind, notes=notes
    )
    if not _quantized(wanted):
        return gate_set, np.zeros((0, 1, size, size), np.uint8), "not needed"
    if opts.calib_data is not None:
        pool, calib_source = load_split(opts.calib_data, "train", size), f"{opts.calib_data} train"
    else:
        pool, calib_source = run_data.train, f"{run_source}: train split"
        if kind != "gate-data":  # calibration never sees the gate's images
            held = set(base.sources)
            pool = pool.subset(np.flatnonzero([s not in held for s in pool.sources]))
            calib_source += " without the gate slice"
    if len(pool) == 0:
        raise ConversionError(f"{calib_source}: no images to calibrate INT8 on")
    chosen = np.random.default_rng(seed).permutation(len(pool))[: opts.calib_size]
    return gate_set, pool.images[np.sort(chosen)], calib_source


def _fingerprint_note(data: TrainingData, card: ModelCard) -> str:
    expected = card.data.get("fingerprint")
    if not expected:
        return "the card records no data fingerprint"
    if fingerprint(data.train, data.val) == expected:
        return "same data fingerprint as training"
    return f"WARNING: data fingerprint differs from training's {expected}"


def _make_variants(
    fp32: Path,
    work: Path,
    card: ModelCard,
    wanted: list[str],
    reader: CalibrationReader,
    opts: ConvertOptions,
    judge: Callable[[Path], gate.Assessment],
    decidable: bool,
) -> list[Variant]:
    """The variants besides FP32; with ``auto`` calibration every method is tried and, when the
    best fails, repaired per layer, but only where the gate set can decide (``decidable``)."""
    from cxr.convert.calibrate import cache_path, make_int8
    from cxr.convert.fp16 import convert_fp16
    from cxr.convert.quantize import CALIBRATION_METHODS, prepare

    if opts.calib_method != "auto":
        methods = (opts.calib_method,)
    else:
        methods = CALIBRATION_METHODS if decidable else ("minmax",)
    repair = opts.precision_search and decidable
    made = []
    prepared = prepare(fp32, work / "model_fp32_prepared.onnx") if _quantized(wanted) else None
    for method in methods:  # calibrated once per conversion, shared by both INT8 flavours
        cache_path(work, method).unlink(missing_ok=True)
    for name in wanted:
        path = work / f"model_{name}.onnx"
        if name == tensorrt_variant("fp16"):
            variant = Variant(name, convert_fp16(fp32, path))
            _finish(variant, card, fp32)
            variant.assessment = judge(path)
        else:
            flavour = "tensorrt" if name == tensorrt_variant("int8") else "cpu"
            result = make_int8(prepared, work, name, flavour, reader, methods, judge, repair)
            shutil.copyfile(result.path, path)
            variant = Variant(name, path, result.assessment, result)
            _finish(variant, card, fp32)
        made.append(variant)
    for method in methods:
        cache_path(work, method).unlink(missing_ok=True)
    return made


def _finish(variant: Variant, card: ModelCard, fp32: Path) -> None:
    """Check a made model against the tensor contract (with ``HEATMAP`` when the FP32 model has
    it) and embed its card (with its precision)."""
    import onnx

    proto = onnx.load(str(variant.path))
    problems = contract_problems(proto, heatmap=has_heatmap(fp32))
    if problems:
        raise ConversionError(f"{variant.path}: breaks the tensor contract: {'; '.join(problems)}")
    embed_card(proto, card, {"precision": variant.int8.precision()} if variant.int8 else None)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(variant.path))


def _record(variant: Variant) -> None:
    assessment = variant.assessment
    clean = assessment.results["clean"]
    flips = clean.flips_urgent_to_routine + clean.flips_routine_to_urgent
    is_reference = variant.name == "fp32"
    description = DESCRIPTIONS[variant.name]
    if variant.int8 and variant.int8.keep_float:
        description += f"; {len(variant.int8.keep_float)} layers kept in float"
    variant.record = {
        "variant": variant.name,
        "model": classifier_model(variant.name),
        "description": description,
        "file": str(variant.path),
        "size_bytes": variant.path.stat().st_size,
        "auc": clean.auc.variant,
        "sensitivity": clean.sensitivity.variant,
        "specificity": clean.specificity.variant,
        "agreement_with_fp32": 1.0 - flips / clean.n,
        "max_abs_diff_vs_fp32": clean.max_abs_score_diff,  # of the triage score
        "evaluated_with": "onnxruntime CPU" + (" (proxy)" if variant.tensorrt else ""),
        "gate": "reference" if is_reference else ("pass" if assessment.passed else "refused"),
        "refusals": [] if is_reference else assessment.refusals,
        "paired": None if is_reference else assessment.as_dict(),
    }
    if variant.int8:
        result = variant.int8
        full = None
        if result.path != result.full_path:  # repaired: the refused full model, for comparison
            full = {"file": str(result.full_path), **_verdict(result.tried[result.method])}
        variant.record.update(
            calibration={
                "method": result.method,
                "tried": {m: _verdict(a) for m, a in result.tried.items()},
            },
            float_layers=list(result.keep_float),
            float_layer_labels=result.precision()["float_layer_labels"],
            precision_search=result.search.as_dict() if result.search else None,
            full_int8=full,
        )


def _verdict(assessment: gate.Assessment) -> dict:
    return {
        "gate": "pass" if assessment.passed else "refused",
        "refusals": assessment.refusals,
        "worst_loss_over_limit": assessment.worst,
    }


def _bench_cpu(variants: list[Variant], opts: ConvertOptions) -> None:
    from cxr.runtime.speed import bench_onnx

    for variant in variants:
        full = variant.record.get("full_int8")
        if variant.tensorrt:
            variant.record["speed"] = None
            variant.record["speed_note"] = (
                "not measured: a TensorRT variant; its ONNX on CPU says nothing about the engine"
            )
        elif opts.bench_seconds <= 0:
            variant.record["speed"] = None
            variant.record["speed_note"] = "not measured (bench seconds 0)"
        else:
            rows = bench_onnx(variant.path, list(opts.bench_batches), opts.bench_seconds)
            variant.record["speed"] = rows
            variant.record["speed_note"] = "onnxruntime CPU in-process, all cores"
            if full:
                full["speed"] = bench_onnx(
                    Path(full["file"]), list(opts.bench_batches), opts.bench_seconds
                )


def _publish(
    repo: Path, variants: list[Variant], card: dict, opts: ConvertOptions, trt_missing: str | None
) -> list[Classifier]:
    published = []
    for variant in variants:
        record = variant.record
        if record["gate"] == "refused" and not opts.allow_accuracy_drop:
            record["published"] = False
            record["status"] = "not published: " + "; ".join(record["refusals"])
            continue
        clf = Classifier(variant.name, variant.path, card)
        if variant.tensorrt:  # config max_batch_size = the engine profile's largest batch
            folder = publish_classifier(repo, clf, Scheduling(opts.max_batch))
        else:
            folder = publish_classifier(repo, clf)
        published.append(clf)
        record["published"] = True
        record["status"] = "published" + (
            " despite the gate (--allow-accuracy-drop)" if record["gate"] == "refused" else ""
        )
        if variant.tensorrt:
            record["engine"] = _engine(folder, card, opts, trt_missing)
            record["status"] += f"; {record['engine']['status']}"
    return published


def _engine(folder: Path, card: dict, opts: ConvertOptions, trt_missing: str | None) -> dict:
    """Build the TensorRT plan of a published TensorRT variant, or say why it was not built."""
    plan = folder / VERSION / PLAN_FILE
    stale = plan.is_file()  # built from an earlier ONNX: never serve it with the new config
    plan.unlink(missing_ok=True)
    stamp_path(plan).unlink(missing_ok=True)
    note = ". Removed the plan built from an earlier ONNX" if stale else ""
    if trt_missing:
        return {
            "built": False,
            "status": f"engine not built: {trt_missing}. Its ONNX input and config are in the "
            f"repository; {ENGINES_HINT}{note}",
        }
    try:
        stamp = tensorrt.build_engine(
            folder / ONNX_FILE, plan, int(card["image_size"]), opts.max_batch, folder / TIMING_CACHE
        )
    except tensorrt.EngineBuildError as err:
        if opts.tensorrt == "on":
            raise ConversionError(str(err)) from err
        return {"built": False, "status": f"engine build failed: {err}. {ENGINES_HINT}{note}"}
    return {"built": True, "plan": str(plan), "stamp": stamp, "status": f"engine built: {plan}"}


def _remove_others(repo: Path, published: set[str]) -> list[str]:
    """Remove classifier variants of earlier conversions that this one did not publish, so every
    variant served comes from the same run (with the same card and threshold)."""
    removed = []
    for folder in sorted(repo.glob(f"{CLASSIFIER_PREFIX}*")):
        if folder.name not in published and (folder / CONFIG_FILE).is_file():
            shutil.rmtree(folder)
            removed.append(folder.name)
    return removed
