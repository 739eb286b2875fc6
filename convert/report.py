"""``convert_report.json`` and ``convert_report.md``: what ``cxr convert`` made, measured and
published, and what it did not, with the reason."""

from __future__ import annotations

import json
from pathlib import Path

JSON_FILE = "convert_report.json"
MARKDOWN_FILE = "convert_report.md"


def write_report(report: dict, folder: Path) -> list[Path]:
    """Write the report as JSON and Markdown into ``folder``; return both paths."""
    folder.mkdir(parents=True, exist_ok=True)
    json_path, md_path = folder / JSON_FILE, folder / MARKDOWN_FILE
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path.write_text(markdown(report))
    return [json_path, md_path]


def _num(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _speed(record: dict, batch: int) -> str:
    rows = {row["batch"]: row for row in record.get("speed") or []}
    return f"{rows[batch]['images_per_s']:.1f}" if batch in rows else "n/a"


def _interval(diff: dict, digits: int = 4) -> str:
    if diff["diff"] is None:
        return "n/a"
    return f"{diff['diff']:+.{digits}f} [{diff['lower']:+.{digits}f}, {diff['upper']:+.{digits}f}]"


def _limits(limits: dict) -> str:
    return ", ".join(f"{name} {value}" for name, value in limits.items())


def _paired(record: dict) -> list[str]:
    """The paired differences of one variant, a row per gate condition."""
    lines = [
        f"### {record['model']}",
        "",
        "| condition | n | AUC diff [95% CI] | sensitivity diff [95% CI] | "
        "specificity diff [95% CI] | flips urgent->routine | flips routine->urgent |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for name, r in record["paired"]["conditions"].items():
        lines.append(
            f"| {name} | {r['n']} | {_interval(r['auc'])} | {_interval(r['sensitivity'])} | "
            f"{_interval(r['specificity'])} | {r['flips_urgent_to_routine']} | "
            f"{r['flips_routine_to_urgent']} |"
        )
    lines.append("")
    if record["refusals"]:
        lines.append("Refused: " + "; ".join(record["refusals"]) + ".")
    calib = record.get("calibration")
    if calib:
        tried = ", ".join(
            f"{m} {v['gate']} (worst loss bound {v['worst_loss_over_limit']:.2f}x its limit)"
            for m, v in calib["tried"].items()
        )
        lines.append(f"Calibration: {calib['method']} (fully quantized: {tried}).")
        layers = record["float_layers"]
        named = [
            f"{n} ({label})" for n, label in zip(layers, record["float_layer_labels"], strict=True)
        ]
        lines.append(
            f"Layers kept in float ({len(layers)}): {', '.join(named)}."
            if layers
            else "Layers kept in float: none besides pre- and post-processing."
        )
        search = record.get("precision_search")
        if search:
            found = "found" if search["passed"] else "no set of layers passes"
            lines.append(f"Per-layer search: {found} after {search['trials']} trial models.")
        full = record.get("full_int8")
        if full:
            lines.append(
                f"Fully quantized ({calib['method']}): {full['gate']}: "
                f"{'; '.join(full['refusals']) or 'no refusal'}; img/s batch 1 / 8: "
                f"{_speed(full, 1)} / {_speed(full, 8)}."
            )
    return [*lines, ""]


def markdown(report: dict) -> str:
    """The report as a Markdown page: settings, one table row per variant, the paired
    differences per variant and gate condition, then notes."""
    card, gate, calib = report["card"], report["gate"], report["calibration"]
    lines = [
        f"# Conversion report: {report['run_dir']}",
        "",
        f"- created: {report['created_at']}; model: {card['arch']} at "
        f"{card['image_size']}x{card['image_size']}, classes {', '.join(card['classes'])}, "
        f"operating threshold {card['threshold']:.4f}",
        *(
            f"- parity FP32 ONNX vs PyTorch on {p['images']} images: max |diff| of "
            f"{p['output']} {p['max_abs_diff']:.2e} (limit {p['limit']:.0e}): "
            f"{'ok' if p['ok'] else 'FAILED'}"
            for p in report["parity"]
        ),
        f"- calibration: {calib['images']} images ({calib['requested']} requested) from "
        f"{calib['source']}, method {calib['method']}",
        f"- accuracy gate set ({gate['kind']}): {gate['images']} images ({gate['positives']} "
        f"abnormal, {gate['negatives']} normal) from {gate['source']}; conditions: "
        f"{', '.join(gate['conditions'])}",
        f"- gate rule: each variant paired with FP32 on the same images, per condition; refused "
        f"when the upper bound of the {gate['confidence']:.0%} interval of a loss exceeds its "
        f"limit ({_limits(gate['limits'])})"
        + (" (--allow-accuracy-drop: published anyway)" if gate["allow_accuracy_drop"] else ""),
        *(f"- gate set note: {note}" for note in gate["notes"]),
        f"- per-layer precision search when INT8 fails: {gate['precision_search']}",
        f"- evaluated with: {gate['evaluated_with']}",
        "",
        "| variant | size (MB) | AUC | sensitivity | specificity | agreement with FP32 | "
        "max abs diff vs FP32 | img/s batch 1 | img/s batch 8 | layers in float | gate | "
        "published |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|---|",
    ]
    for r in report["variants"]:
        floats = len(r["float_layers"]) if "float_layers" in r else "-"
        lines.append(
            f"| {r['model']} | {r['size_bytes'] / 1e6:.2f} | {_num(r['auc'])} | "
            f"{_num(r['sensitivity'])} | {_num(r['specificity'])} | "
            f"{r['agreement_with_fp32']:.4f} | {r['max_abs_diff_vs_fp32']:.2e} | "
            f"{_speed(r, 1)} | {_speed(r, 8)} | {floats} | {r['gate']} | "
            f"{'yes' if r.get('published') else 'no'} |"
        )
    lines += [
        "",
        "AUC, sensitivity, specificity, agreement and max abs diff: on the clean gate images.",
        "",
        "## Paired differences against FP32 (variant - FP32; negative: a loss)",
        "",
    ]
    for r in report["variants"]:
        if r["paired"]:
            lines += _paired(r)
    lines += ["## Variants", ""]
    for r in report["variants"]:
        lines.append(f"- **{r['model']}**: {r['description']}. {r.get('status', '')}.")
        if r.get("speed_note"):
            lines.append(f"  Speed: {r['speed_note']}.")
        heatmap = r.get("heatmap_vs_fp32")
        if heatmap:
            lines.append(
                f"  HEATMAP vs FP32 on {heatmap['images']} clean gate images: same peak cell "
                f"{heatmap['same_peak']:.1%}, mean |diff| {heatmap['mean_abs_diff']:.4f}, max "
                f"|diff| {heatmap['max_abs_diff']:.3f} (maps scaled 0..1)."
            )
    for name, reason in report["not_made"].items():
        lines.append(f"- **{name}**: not made: {reason}.")
    trt = report["tensorrt"]
    built = f"engines not built here: {trt['unavailable']}." if trt["unavailable"] else "available."
    lines += [
        "",
        f"TensorRT: --tensorrt {trt['mode']}; {built}",
        "",
        f"Published into {report['repo']}: {', '.join(report['published'])}; "
        f"the ensemble routes to {report['deployed']}.",
    ]
    if report["removed_from_repo"]:
        lines.append(
            "Removed (variants of an earlier conversion that this one did not publish): "
            + ", ".join(report["removed_from_repo"])
        )
    return "\n".join(lines) + "\n"
