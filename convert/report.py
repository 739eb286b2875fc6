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


def markdown(report: dict) -> str:
    """The report as a Markdown page: settings, one table row per variant, then notes."""
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
        f"- accuracy gate: {gate['images']} images from {gate['source']}; refused when AUC drops "
        f"by more than {gate['auc_drop_limit']} or sensitivity at the threshold by more than "
        f"{gate['sensitivity_drop_limit']}"
        + (" (--allow-accuracy-drop: published anyway)" if gate["allow_accuracy_drop"] else ""),
        f"- evaluated with: {gate['evaluated_with']}",
        "",
        "| variant | size (MB) | AUC | sensitivity | specificity | agreement with FP32 | "
        "max abs diff vs FP32 | img/s batch 1 | img/s batch 8 | gate | published |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|---|---|",
    ]
    for r in report["variants"]:
        lines.append(
            f"| {r['model']} | {r['size_bytes'] / 1e6:.2f} | {_num(r['auc'])} | "
            f"{_num(r['sensitivity'])} | {_num(r['specificity'])} | "
            f"{r['agreement_with_fp32']:.4f} | {r['max_abs_diff_vs_fp32']:.2e} | "
            f"{_speed(r, 1)} | {_speed(r, 8)} | {r['gate']} | "
            f"{'yes' if r.get('published') else 'no'} |"
        )
    lines += ["", "## Variants", ""]
    for r in report["variants"]:
        lines.append(f"- **{r['model']}**: {r['description']}. {r.get('status', '')}.")
        if r.get("speed_note"):
            lines.append(f"  Speed: {r['speed_note']}.")
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
